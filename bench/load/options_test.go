package load

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var target = netip.MustParseAddrPort("192.0.2.1:9000")

// wantInvalid checks that err is ErrInvalidOptions naming every problem.
func wantInvalid(t *testing.T, err error, problems ...string) {
	t.Helper()
	if !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("err = %v, want ErrInvalidOptions", err)
	}
	for _, p := range problems {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

func TestLatencyOptionsDefaults(t *testing.T) {
	o, err := LatencyOptions{Target: target, CPU: NoCPU}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := LatencyOptions{Target: target, CPU: NoCPU, PayloadBytes: DefaultPayloadBytes, Warmup: DefaultLatencyWarmup,
		Duration: DefaultLatencyDuration, Count: DefaultLatencyCount, Timeout: DefaultRequestTimeout}
	if o != want {
		t.Errorf("defaults = %+v, want %+v", o, want)
	}
	if o, _ := (LatencyOptions{Target: target, Warmup: -1}).withDefaults(); o.Warmup != 0 {
		t.Errorf("negative warm-up became %v, want 0 (none)", o.Warmup)
	}
}

func TestLatencyOptionsInvalid(t *testing.T) {
	_, err := LatencyOptions{PayloadBytes: 8, Count: MaxLatencyCount + 1, Timeout: time.Microsecond, CPU: 4096, Duration: -time.Second}.withDefaults()
	wantInvalid(t, err, "target: no address", "payload 8 bytes", "count", "timeout", "cpu 4096", "duration")
	_, err = LatencyOptions{Target: netip.MustParseAddrPort("[fe80::1%eth0]:9000")}.withDefaults()
	wantInvalid(t, err, "zoned")
	_, err = LatencyOptions{Target: netip.MustParseAddrPort("10.0.0.1:0")}.withDefaults()
	wantInvalid(t, err, "port 0")
	// Invalid options fail before any namespace is touched.
	if _, err := Latency(context.Background(), LatencyOptions{Netns: "tlld-nonexistent"}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("Latency without a target: %v, want ErrInvalidOptions", err)
	}
}

func TestConnectOptionsDefaults(t *testing.T) {
	o, err := ConnectOptions{Target: target}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := ConnectOptions{Target: target, Workers: DefaultConnectWorkers, Threads: DefaultConnectThreads, Warmup: DefaultConnectWarmup,
		Duration: DefaultConnectDuration, Timeout: DefaultConnectTimeout, MessageBytes: DefaultMessageBytes}
	if o != want {
		t.Errorf("defaults = %+v, want %+v", o, want)
	}
}

func TestConnectOptionsInvalid(t *testing.T) {
	_, err := ConnectOptions{Workers: 2, Threads: 3, Count: -1, Timeout: time.Hour, MessageBytes: MaxMessageBytes + 1, Warmup: 2 * MaxDuration}.withDefaults()
	wantInvalid(t, err, "target", "threads 3", "count -1", "timeout 1h", "message 4097 bytes", "warm-up")
	_, err = ConnectOptions{Target: target, Workers: MaxConnectWorkers + 1}.withDefaults()
	wantInvalid(t, err, "workers 1025")
}

func TestConnectRateMissingNetns(t *testing.T) {
	_, err := ConnectRate(context.Background(), ConnectOptions{Target: target, Netns: "tlld-nonexistent"})
	if err == nil || !strings.Contains(err.Error(), "ip netns list") {
		t.Errorf("err = %v, want a missing-netns error saying how to check", err)
	}
}

func TestIperfOptions(t *testing.T) {
	o, err := IperfOptions{Server: netip.MustParseAddr("10.96.0.14")}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Binary != "iperf3" || o.Port != DefaultIperfPort || o.Duration != DefaultIperfDuration || o.Streams != 1 {
		t.Errorf("defaults = %+v", o)
	}
	if got, want := strings.Join(o.clientArgs(), " "), "-c 10.96.0.14 -p 5201 -t 3 -J --connect-timeout 3000"; got != want {
		t.Errorf("client args = %q, want %q", got, want)
	}
	o = IperfOptions{Server: netip.MustParseAddr("10.0.0.2"), Port: 5299, Duration: 1500 * time.Millisecond, Streams: 4,
		UDP: true, Bitrate: 2_000_000_000, Length: 1400, Reverse: true}
	if got, want := strings.Join(o.clientArgs(), " "), "-c 10.0.0.2 -p 5299 -t 2 -J --connect-timeout 3000 -P 4 -u -b 2000000000 -l 1400 -R"; got != want {
		t.Errorf("client args = %q, want %q", got, want)
	}

	_, err = IperfOptions{ServerNetns: "/proc/1/ns/net", Streams: 1000, Length: -1}.withDefaults()
	wantInvalid(t, err, "server: target: no address", "/proc/1/ns/net", "streams 1000", "length -1")
}
