package daemon

import (
	"net/http"
	"net/http/pprof"
)

// withProfiles adds Go's runtime profiles (/debug/pprof/) to the debug API
// served on the debug socket. Only there: the socket is 0600 root's, so a
// profile is as private as the process, while --debug-addr may listen on a
// network. A CPU profile or trace is bounded by the server's write timeout
// (pprof refuses seconds= beyond it), so a request cannot hold the daemon.
func withProfiles(api http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", api)
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}
