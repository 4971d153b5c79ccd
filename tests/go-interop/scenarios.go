package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client/metrics"
)

const (
	transferSize    = 20 << 20 // bytes per direction for upload/download scenarios
	httpBufferSize  = 64 << 10 // http.Transport read/write buffer, same for tunnel and direct
	concurrentConns = 100
	concurrentBytes = 64 << 10
	reusableDials   = 20
	// tunnelDoneWait bounds how long a single-use tunnel may take to report
	// Done() after its only connection closed. It is deliberately shorter
	// than the library's own 10 s CLOSE_RSP wait (client.CloseTimeout), so a
	// proxy that never answers CLOSE_REQ with CLOSE_RSP fails instead of
	// passing slowly.
	tunnelDoneWait = 5 * time.Second
)

type env struct {
	fe   *frontend
	dest *destinations
}

type scenario struct {
	name   string
	budget time.Duration
	run    func(ctx context.Context, e *env, r *report) error
}

var allScenarios = []scenario{
	{"http-get", 30 * time.Second, scenarioHTTPGet},
	{"upload-20mib", 60 * time.Second, scenarioUpload},
	{"download-20mib", 60 * time.Second, scenarioDownload},
	{"dial-refused", 30 * time.Second, scenarioDialRefused},
	{"concurrent-100", 60 * time.Second, scenarioConcurrent},
	{"reusable-tunnel", 60 * time.Second, scenarioReusable},
	{"echo-chunks", 30 * time.Second, scenarioEchoChunks},
}

// report collects ordered key=value details of one scenario.
type report struct {
	mu  sync.Mutex
	kvs []kv
}

type kv struct {
	k string
	v any
}

func (r *report) add(k string, v any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kvs = append(r.kvs, kv{k, v})
}

func (r *report) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	parts := make([]string, 0, len(r.kvs))
	for _, p := range r.kvs {
		switch v := p.v.(type) {
		case float64:
			parts = append(parts, fmt.Sprintf("%s=%.2f", p.k, v))
		default:
			parts = append(parts, fmt.Sprintf("%s=%v", p.k, v))
		}
	}
	return strings.Join(parts, " ")
}

func (r *report) asMap() map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]any, len(r.kvs))
	for _, p := range r.kvs {
		if d, ok := p.v.(time.Duration); ok {
			m[p.k+"_ms"] = float64(d.Microseconds()) / 1000
			continue
		}
		m[p.k] = p.v
	}
	return m
}

// httpClientVia returns an http.Client that opens every connection with dial
// and never reuses connections (a single-use tunnel supports one dial only).
func httpClientVia(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:       dial,
		DisableKeepAlives: true,
		ReadBufferSize:    httpBufferSize,
		WriteBufferSize:   httpBufferSize,
	}}
}

func directHTTPClient() *http.Client {
	var d net.Dialer
	return httpClientVia(d.DialContext)
}

// waitDone waits for a tunnel's Done channel.
func waitDone(ctx context.Context, t client.Tunnel, d time.Duration) (time.Duration, error) {
	start := time.Now()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-t.Done():
		return time.Since(start), nil
	case <-timer.C:
		return 0, fmt.Errorf("tunnel Done() not closed within %v after its connection ended", d)
	case <-ctx.Done():
		return 0, fmt.Errorf("tunnel Done() not closed before scenario deadline: %w", ctx.Err())
	}
}

// created creates a tunnel with create and reports how long that took as "create".
func created[T any](r *report, create func() (T, error)) (T, error) {
	start := time.Now()
	t, err := create()
	if err == nil {
		r.add("create", time.Since(start).Round(time.Microsecond))
	}
	return t, err
}

func scenarioHTTPGet(ctx context.Context, e *env, r *report) error {
	start := time.Now()
	tun, err := created(r, func() (client.Tunnel, error) { return e.fe.singleUse(ctx) })
	if err != nil {
		return err
	}
	if err := getHello(ctx, httpClientVia(tun.DialContext), e.dest.httpAddr); err != nil {
		return err
	}
	r.add("get", time.Since(start).Round(time.Microsecond))
	d, err := waitDone(ctx, tun, tunnelDoneWait)
	if err != nil {
		return err
	}
	r.add("tunnel_done_after", d.Round(time.Microsecond))
	return nil
}

func mbps(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds() / 1e6
}

type transferFunc func(ctx context.Context, hc *http.Client, httpAddr string) (time.Duration, error)

// transferBoth runs fn once through a fresh single-use tunnel and once
// directly, and reports both throughputs and their ratio.
func transferBoth(ctx context.Context, e *env, r *report, fn transferFunc) error {
	// Warm the hash cache so hashing the expected pattern is not timed.
	patternSHA256(uploadSeed, transferSize)
	patternSHA256(downloadSeed, transferSize)

	r.add("bytes", transferSize)
	tun, err := created(r, func() (client.Tunnel, error) { return e.fe.singleUse(ctx) })
	if err != nil {
		return err
	}
	tunDur, err := fn(ctx, httpClientVia(tun.DialContext), e.dest.httpAddr)
	if err != nil {
		return fmt.Errorf("through tunnel: %w", err)
	}
	if _, err := waitDone(ctx, tun, tunnelDoneWait); err != nil {
		return err
	}
	dirDur, err := fn(ctx, directHTTPClient(), e.dest.httpAddr)
	if err != nil {
		return fmt.Errorf("direct (no tunnel): %w", err)
	}
	t, d := mbps(transferSize, tunDur), mbps(transferSize, dirDur)
	r.add("tunnel_MBps", t)
	r.add("direct_MBps", d)
	ratio := 0.0
	if d > 0 {
		ratio = t / d
	}
	r.add("ratio", ratio)
	r.add("tunnel_time", tunDur.Round(time.Microsecond))
	r.add("direct_time", dirDur.Round(time.Microsecond))
	return nil
}

func scenarioUpload(ctx context.Context, e *env, r *report) error {
	return transferBoth(ctx, e, r, upload)
}

func scenarioDownload(ctx context.Context, e *env, r *report) error {
	return transferBoth(ctx, e, r, download)
}

func scenarioDialRefused(ctx context.Context, e *env, r *report) error {
	tun, err := e.fe.singleUse(ctx)
	if err != nil {
		return err
	}
	conn, err := tun.DialContext(ctx, "tcp", e.dest.closedAddr)
	if err == nil {
		_ = conn.Close()
		return fmt.Errorf("dial to closed port %s unexpectedly succeeded", e.dest.closedAddr)
	}
	r.add("error", fmt.Sprintf("%q", err.Error()))
	isDF, reason := client.GetDialFailureReason(err)
	r.add("reason", reason)
	if !strings.Contains(err.Error(), "connection refused") {
		return fmt.Errorf("dial error %q does not contain \"connection refused\" (reason %q)", err, reason)
	}
	if !isDF || reason != metrics.DialFailureEndpoint {
		return fmt.Errorf("GetDialFailureReason(%q) = (%v, %q), want (true, %q)",
			err, isDF, reason, metrics.DialFailureEndpoint)
	}
	// The library stops serving after a failed DIAL_RSP; the tunnel must end.
	d, err := waitDone(ctx, tun, tunnelDoneWait)
	if err != nil {
		return err
	}
	r.add("tunnel_done_after", d.Round(time.Microsecond))
	return nil
}

// connPayload is the distinct payload of concurrent connection i: the
// pattern stream seeded by the index, prefixed with the index in ASCII.
func connPayload(i int) []byte {
	b := make([]byte, concurrentBytes)
	_, _ = io.ReadFull(newPatternReader(uint64(i+1)*0x1000193, concurrentBytes), b)
	copy(b, fmt.Sprintf("conn-%03d:", i))
	return b
}

// closeUnless closes c in the background (not waiting for a CLOSE_RSP) unless
// *done: a scenario defers it for what it closes itself when it gets that far.
func closeUnless(done *bool, c io.Closer) {
	if !*done {
		go c.Close()
	}
}

// echoConn dials the echo server through a new single-use tunnel.
func echoConn(ctx context.Context, e *env) (client.Tunnel, net.Conn, error) {
	tun, err := e.fe.singleUse(ctx)
	if err != nil {
		return nil, nil, err
	}
	conn, err := tun.DialContext(ctx, "tcp", e.dest.echoAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("DialContext(echo): %w", err)
	}
	return tun, conn, nil
}

func echoOnce(ctx context.Context, e *env, i int) error {
	tun, conn, err := echoConn(ctx, e)
	if err != nil {
		return err
	}
	payload := connPayload(i)
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		werr <- err
	}()
	got := make([]byte, len(payload))
	n, rerr := io.ReadFull(conn, got)
	if rerr != nil {
		_ = conn.Close() // also unblocks a pending Write
		if err := <-werr; err != nil {
			return fmt.Errorf("read after %d/%d bytes: %v (write: %v)", n, len(payload), rerr, err)
		}
		return fmt.Errorf("read after %d/%d bytes: %w", n, len(payload), rerr)
	}
	if err := <-werr; err != nil {
		_ = conn.Close()
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, payload) {
		_ = conn.Close()
		off := 0
		for off < len(got) && got[off] == payload[off] {
			off++
		}
		return fmt.Errorf("echoed data differs from sent data at offset %d (got prefix %q)", off, got[:12])
	}
	if err := conn.Close(); err != nil {
		return fmt.Errorf("conn.Close(): %w", err)
	}
	if _, err := waitDone(ctx, tun, tunnelDoneWait); err != nil {
		return err
	}
	return nil
}

func scenarioConcurrent(ctx context.Context, e *env, r *report) error {
	start := time.Now()
	errs := make([]error, concurrentConns)
	parallel(concurrentConns, func(i int) {
		errs[i] = echoOnce(ctx, e, i)
	})
	failed := 0
	var first []string
	for i, err := range errs {
		if err != nil {
			failed++
			if len(first) < 3 {
				first = append(first, fmt.Sprintf("conn %d: %v", i, err))
			}
		}
	}
	r.add("tunnels", concurrentConns)
	r.add("bytes_each", concurrentBytes)
	r.add("elapsed", time.Since(start).Round(time.Millisecond))
	if failed > 0 {
		return fmt.Errorf("%d/%d connections failed; first: %s", failed, concurrentConns, strings.Join(first, "; "))
	}
	return nil
}

func scenarioReusable(ctx context.Context, e *env, r *report) error {
	rt, err := created(r, func() (client.ReusableTunnel, error) { return e.fe.reusable(ctx) })
	if err != nil {
		return err
	}
	closed := false
	defer closeUnless(&closed, rt)
	hc := httpClientVia(rt.DialContext)

	t0 := time.Now()
	for i := 0; i < reusableDials; i++ {
		if err := getHello(ctx, hc, e.dest.httpAddr); err != nil {
			return fmt.Errorf("sequential request %d: %w", i, err)
		}
	}
	r.add("sequential", fmt.Sprintf("%dx/%v", reusableDials, time.Since(t0).Round(time.Millisecond)))

	t0 = time.Now()
	errs := make([]error, reusableDials)
	parallel(reusableDials, func(i int) {
		errs[i] = getHello(ctx, hc, e.dest.httpAddr)
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("concurrent requests: %w", err)
	}
	r.add("concurrent", fmt.Sprintf("%dx/%v", reusableDials, time.Since(t0).Round(time.Millisecond)))

	// One raw connection on a per-dial stream: echo a message, then Close()
	// must get its CLOSE_RSP (nil error) well before the 10 s close timeout.
	t0 = time.Now()
	if err := reusableEcho(ctx, rt, e.dest.echoAddr); err != nil {
		return err
	}
	r.add("echo_close", time.Since(t0).Round(time.Microsecond))

	t0 = time.Now()
	closeErr := make(chan error, 1)
	closed = true
	go func() { closeErr <- rt.Close() }()
	select {
	case err := <-closeErr:
		if err != nil {
			return fmt.Errorf("ReusableTunnel.Close(): %w", err)
		}
	case <-time.After(20 * time.Second):
		return errors.New("ReusableTunnel.Close() did not return within 20s")
	case <-ctx.Done():
		return fmt.Errorf("ReusableTunnel.Close() did not return: %w", ctx.Err())
	}
	select {
	case <-rt.Done():
	default:
		return errors.New("Done() not closed after ReusableTunnel.Close() returned")
	}
	r.add("close", time.Since(t0).Round(time.Microsecond))

	if c, err := rt.DialContext(ctx, "tcp", e.dest.httpAddr); err == nil {
		_ = c.Close()
		return errors.New("DialContext after Close() succeeded")
	} else if _, reason := client.GetDialFailureReason(err); reason != metrics.DialFailureTunnelClosed {
		return fmt.Errorf("DialContext after Close(): %v (reason %q), want reason %q", err, reason, metrics.DialFailureTunnelClosed)
	}
	return nil
}

func reusableEcho(ctx context.Context, rt client.ReusableTunnel, echoAddr string) error {
	conn, err := rt.DialContext(ctx, "tcp", echoAddr)
	if err != nil {
		return fmt.Errorf("DialContext(echo) on reusable tunnel: %w", err)
	}
	const msg = "reusable-tunnel ping"
	if _, err := conn.Write([]byte(msg)); err != nil {
		_ = conn.Close()
		return fmt.Errorf("echo write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		_ = conn.Close()
		return fmt.Errorf("echo read: %w", err)
	}
	if string(got) != msg {
		_ = conn.Close()
		return fmt.Errorf("echo read %q, want %q", got, msg)
	}
	start := time.Now()
	if err := conn.Close(); err != nil {
		return fmt.Errorf("conn.Close() on reusable tunnel = %v after %v, want nil", err, time.Since(start).Round(time.Millisecond))
	}
	if d := time.Since(start); d > tunnelDoneWait {
		return fmt.Errorf("conn.Close() on reusable tunnel took %v (CLOSE_RSP late)", d.Round(time.Millisecond))
	}
	return nil
}

// scenarioEchoChunks mirrors upstream's TestEchoServer: a read into a buffer
// smaller than the pending packet returns a prefix and keeps the rest; a read
// never merges two packets.
func scenarioEchoChunks(ctx context.Context, e *env, r *report) error {
	tun, conn, err := echoConn(ctx, e)
	if err != nil {
		return err
	}
	ok := false
	defer closeUnless(&ok, conn)
	const msg = "1234567890123456789012345"
	const msg2 = "1234567"
	write := func(s string) error {
		n, err := conn.Write([]byte(s))
		if err != nil {
			return fmt.Errorf("Write(%q): %w", s, err)
		}
		if n != len(s) {
			return fmt.Errorf("Write(%q) = %d, want %d", s, n, len(s))
		}
		return nil
	}
	var buf [10]byte
	read := func(want string) error {
		n, err := conn.Read(buf[:])
		if err != nil {
			return fmt.Errorf("Read (want %q): %w", want, err)
		}
		if string(buf[:n]) != want {
			return fmt.Errorf("Read = %q, want %q", buf[:n], want)
		}
		return nil
	}
	steps := []func() error{
		func() error { return write(msg) },
		func() error { return read(msg[:10]) },
		func() error { return read(msg[10:20]) },
		func() error { return write(msg2) },
		func() error { return read(msg[20:]) },
		func() error { return read(msg2) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	ok = true
	if err := conn.Close(); err != nil {
		return fmt.Errorf("conn.Close() = %v, want nil", err)
	}
	d, err := waitDone(ctx, tun, tunnelDoneWait)
	if err != nil {
		return err
	}
	r.add("reads", "10+10+5+7")
	r.add("tunnel_done_after", d.Round(time.Microsecond))
	return nil
}
