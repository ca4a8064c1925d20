// Package kubetest runs a real kube-apiserver, on a real etcd (weft's
// embedded one, as `weft etcd` serves it), for tests of the Kubernetes
// subnet manager: loopback only, a static token file, RBAC authorization,
// a self-signed serving certificate and an audit log of every write.
//
// The binary is the pinned version hack/kube-apiserver.sh builds:
// $WEFT_KUBE_APISERVER, default DefaultBinary. Without it a test skips,
// saying how to build it; under CI=true it fails.
package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weft-net/weft/lease/etcdserver"
)

// Version is the pinned kube-apiserver version.
const Version = "v1.37.2"

// DefaultBinary is where hack/kube-apiserver.sh puts the binary.
const DefaultBinary = "/var/cache/weft-ci/kube-apiserver-" + Version + "/kube-apiserver"

// Binary is the kube-apiserver to run: $WEFT_KUBE_APISERVER, else
// $WEFT_CI_CACHE's or DefaultBinary. When it is missing the test fails
// under CI=true and skips otherwise.
func Binary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("WEFT_KUBE_APISERVER")
	if bin == "" {
		bin = DefaultBinary
		if c := os.Getenv("WEFT_CI_CACHE"); c != "" {
			bin = filepath.Join(c, "kube-apiserver-"+Version, "kube-apiserver")
		}
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("kube-apiserver %s not found at %s (%v); build it once with ./hack/kube-apiserver.sh (~13 min, into a cache outside the repo)", Version, bin, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// Users of the static token file. Admin is in system:masters; Weft is
// the ServiceAccount deploy/'s ClusterRoleBinding names, as the API
// server sees a ServiceAccount token; Other is a ServiceAccount no role
// is bound to.
const (
	Admin = "admin"
	Weft  = "system:serviceaccount:kube-flannel:weft"
	Other = "system:serviceaccount:kube-flannel:other"
)

// Server is a running kube-apiserver and its etcd.
type Server struct {
	URL string
	Dir string
	// Etcd are the client URLs of the etcd Start runs (nil for a server
	// Prepare made), for a test that works on the storage itself (e.g.
	// compacts it).
	Etcd     []string
	tokens   map[string]string // user -> token
	auditLog string
	// Dial, when set, is how clients reach the server (from outside the
	// network namespace it runs in).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Start runs etcd (in process) and kube-apiserver on loopback for the
// test; both stop when it ends. The server is ready (/readyz) when Start
// returns.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// Options change how StartWith runs the server.
type Options struct {
	// Flags are more kube-apiserver flags, after Args' (e.g.
	// --watch-cache-sizes=nodes#0: watches of Nodes go to etcd).
	Flags []string
}

// StartWith is Start with opts.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	etcd, err := etcdserver.Start(etcdserver.Options{Dir: filepath.Join(dir, "etcd"), LogLevel: "error"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	s := Prepare(t, dir)
	s.Etcd = etcd.Endpoints()
	port := freePort(t)
	s.URL = "https://127.0.0.1:" + strconv.Itoa(port)
	logPath := filepath.Join(dir, "kube-apiserver.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, append(s.Args(strings.Join(s.Etcd, ","), "127.0.0.1", port), opts.Flags...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	if err := s.WaitReady(func() error {
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
			return nil
		}
	}); err != nil {
		t.Fatalf("kube-apiserver: %v\n%s", err, tail(logPath, 30))
	}
	return s
}

// Prepare writes what the API server reads into dir: the static token
// file (a token for Admin, Weft and Other), the service-account key and
// the audit policy (writes logged with their request bodies).
func Prepare(t testing.TB, dir string) *Server {
	t.Helper()
	s := &Server{Dir: dir, tokens: map[string]string{}, auditLog: filepath.Join(dir, "audit.log")}
	var csv strings.Builder
	for i, u := range []struct{ name, groups string }{
		{Admin, "system:masters"},
		{Weft, "system:serviceaccounts,system:serviceaccounts:kube-flannel"},
		{Other, "system:serviceaccounts,system:serviceaccounts:kube-flannel"},
	} {
		tok := randHex(t)
		s.tokens[u.name] = tok
		fmt.Fprintf(&csv, "%s,%s,%d,\"%s\"\n", tok, u.name, 1000+i, u.groups)
	}
	write(t, filepath.Join(dir, "tokens.csv"), csv.String())
	write(t, filepath.Join(dir, "audit-policy.yaml"), `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Request
  verbs: ["create", "update", "patch", "delete"]
- level: Metadata
`)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "sa.key"), string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})))
	return s
}

// Args are kube-apiserver's flags for a server on etcd at etcdURL,
// listening (and advertising, with no endpoint reconciler, which
// refuses a loopback address) on addr:port; Prepare's files; RBAC; a
// self-signed serving certificate made in Dir/certs.
func (s *Server) Args(etcdURL, addr string, port int) []string {
	s.URL = "https://" + net.JoinHostPort(addr, strconv.Itoa(port))
	return []string{
		"--etcd-servers=" + etcdURL,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + filepath.Join(s.Dir, "sa.key"),
		"--service-account-signing-key-file=" + filepath.Join(s.Dir, "sa.key"),
		"--authorization-mode=RBAC",
		"--token-auth-file=" + filepath.Join(s.Dir, "tokens.csv"),
		"--secure-port=" + strconv.Itoa(port),
		"--bind-address=" + addr,
		"--advertise-address=" + addr,
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(s.Dir, "certs"),
		"--service-cluster-ip-range=10.96.0.0/12",
		"--audit-policy-file=" + filepath.Join(s.Dir, "audit-policy.yaml"),
		"--audit-log-path=" + s.auditLog,
		"--audit-log-mode=blocking",
	}
}

// WaitReady waits (up to 90 s) for /readyz; dead reports the process
// gone.
func (s *Server) WaitReady(dead func() error) error {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	if s.Dial != nil {
		tr.DialContext = s.Dial
	}
	c := &http.Client{Timeout: 2 * time.Second, Transport: tr}
	defer tr.CloseIdleConnections()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if err := dead(); err != nil {
			return err
		}
		req, _ := http.NewRequest("GET", s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.tokens[Admin])
		if r, err := c.Do(req); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("not ready within 90 s")
}

// Config is a client config authenticating as user (Admin, Weft or
// Other). The serving certificate is self-signed: it is not verified.
func (s *Server) Config(user string) *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     s.tokens[user],
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             -1, // no client-side rate limit in tests
		Dial:            s.Dial,
	}
}

// Kubeconfig writes a kubeconfig file for user and returns its path.
func (s *Server) Kubeconfig(t testing.TB, user string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	write(t, p, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: %q}
contexts:
- name: c
  context: {cluster: test, user: u}
current-context: c
`, s.URL, s.tokens[user]))
	return p
}

// Client is a clientset authenticating as user.
func (s *Server) Client(t testing.TB, user string) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(s.Config(user))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// AuditEvent is one line of the audit log, the fields tests read.
type AuditEvent struct {
	Stage      string `json:"stage"`
	Verb       string `json:"verb"`
	RequestURI string `json:"requestURI"`
	UserAgent  string `json:"userAgent"`
	User       struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	RequestObject json.RawMessage `json:"requestObject"`
}

// Audit returns the completed requests of user, in order.
func (s *Server) Audit(t testing.TB, user string) []AuditEvent {
	t.Helper()
	f, err := os.Open(s.auditLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []AuditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit log: %v", err)
		}
		if e.User.Username == user && e.Stage == "ResponseComplete" {
			out = append(out, e)
		}
	}
	return out
}

// Ctx is a context that ends with the test (or after d).
func Ctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func randHex(t testing.TB) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func write(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
