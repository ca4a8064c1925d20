package traffic

// Result is one workload's outcome, as `weft traffic` prints it (JSON).
// Fields that do not apply to the mode are omitted.
type Result struct {
	Mode    string  `json:"mode"` // "tcp", "udp" or "rr"
	Target  string  `json:"target"`
	Seconds float64 `json:"seconds"`
	// Bytes received by the server (TCP: verified stream bytes; UDP:
	// payload bytes).
	Bytes         int64   `json:"bytes,omitempty"`
	BitsPerSecond float64 `json:"bits_per_second,omitempty"`

	// TCP
	Streams     int     `json:"streams,omitempty"`
	StreamBytes []int64 `json:"stream_bytes,omitempty"`
	Verify      string  `json:"verify,omitempty"`

	// UDP and rr
	PayloadSize int `json:"payload_size,omitempty"`
	// UDP
	TargetRate int   `json:"target_rate,omitempty"` // 0: flat out
	Sent       int64 `json:"sent,omitempty"`
	SendErrors int64 `json:"send_errors,omitempty"`
	// PaceSkipped is how many datagrams a paced run never sent because
	// the sender fell behind by more than the pacer's bucket holds.
	PaceSkipped  int64    `json:"pace_skipped,omitempty"`
	Delivered    int64    `json:"delivered,omitempty"`
	Reordered    int64    `json:"reordered,omitempty"`
	SentPPS      float64  `json:"sent_pps,omitempty"`
	DeliveredPPS float64  `json:"delivered_pps,omitempty"`
	Loss         *float64 `json:"loss,omitempty"` // 0..1; set for UDP
	// ReceiverOverflows (iperf3's UDP test, where counted) is how many
	// datagrams reached the receiving namespace's UDP layer and were
	// dropped there because the receiver's socket was full
	// (UdpRcvbufErrors): a part of Loss that the path carried.
	ReceiverOverflows *int64 `json:"receiver_overflows,omitempty"`

	// rr
	Requests          int64   `json:"requests,omitempty"`
	RequestsPerSecond float64 `json:"requests_per_second,omitempty"`
	RTTMinUs          float64 `json:"rtt_min_us,omitempty"`
	RTTMedianUs       float64 `json:"rtt_median_us,omitempty"`
	RTTP99Us          float64 `json:"rtt_p99_us,omitempty"`
	RTTMeanUs         float64 `json:"rtt_mean_us,omitempty"`
}
