package main

// Load mode (-load): sustained transfers through a proxy-server + proxy-agent
// pairing with the real konnectivity-client, the way kube-apiserver streams
// `kubectl logs -f` and uploads: one single-use tunnel per connection.
//
// The backends run in this process, on loopback:
//   - source: after reading a one-byte request it streams the load pattern
//     without end (a chatty pod's log), until the connection is closed;
//   - sink: reads an 8-byte big-endian length n, hashes n bytes, answers the
//     32-byte sha256 and closes;
//   - black hole: accepts and never reads (a destination that is stuck).
//
// Phases, in order (each a list of transfers run in parallel): one download of
// -load-bytes, one upload of -load-bytes, -load-conns downloads of
// -load-per bytes each, -load-conns uploads of -load-per bytes each. Every
// transfer is checked with sha256 against the pattern; a transfer that ends
// early or with a wrong hash is a cut. Beside the parallel phases run the
// stalled consumers asked for: -load-stall-download (a tunnel that sends its
// request byte and never reads) and -load-stall-upload (a tunnel to the black
// hole that writes until it is stopped). Their fate is reported, not judged:
// which side closes them depends on the pairing.
//
// Every transfer writes first (the request byte or the length): the client
// registers a connection only after its reader has moved on, so data a backend
// sent before the client wrote could be dropped ("Connection not recognized").
//
// One JSON object on stdout (loadReport).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// loadPeriod is the period of the load pattern: odd, so that no read or write
// size lines up with it.
const loadPeriod = 1<<20 + 13

// loadPattern is two periods of xorshift bytes: any window of up to one period
// starting anywhere in the first period is a plain slice.
var loadPattern = func() []byte {
	b := make([]byte, 2*loadPeriod)
	r := newPatternReader(0x6c6f6164, loadPeriod) // "load"
	if _, err := io.ReadFull(r, b[:loadPeriod]); err != nil {
		panic(err)
	}
	copy(b[loadPeriod:], b[:loadPeriod])
	return b
}()

// loadChunk returns the pattern bytes at stream offset off, at most max of them.
func loadChunk(off int64, max int) []byte {
	p := int(off % loadPeriod)
	if max > loadPeriod {
		max = loadPeriod
	}
	return loadPattern[p : p+max]
}

var (
	loadHashMu    sync.Mutex
	loadHashCache = map[int64][]byte{}
)

// loadSHA256 is the sha256 of the first n bytes of the pattern stream.
func loadSHA256(n int64) []byte {
	loadHashMu.Lock()
	defer loadHashMu.Unlock()
	if h, ok := loadHashCache[n]; ok {
		return h
	}
	h := sha256.New()
	for off := int64(0); off < n; {
		c := loadChunk(off, 256<<10)
		if rest := n - off; int64(len(c)) > rest {
			c = c[:rest]
		}
		h.Write(c)
		off += int64(len(c))
	}
	s := h.Sum(nil)
	loadHashCache[n] = s
	return s
}

type loadBackends struct {
	source, sink, hole string
	lns                []net.Listener
	mu                 sync.Mutex
	conns              map[net.Conn]struct{}
	// done is closed when the backends stop (the black hole's connections wait on it).
	done chan struct{}
}

func (b *loadBackends) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conns == nil {
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *loadBackends) untrack(c net.Conn) {
	b.mu.Lock()
	delete(b.conns, c)
	b.mu.Unlock()
	_ = c.Close()
}

func (b *loadBackends) listen(serve func(net.Conn)) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	b.lns = append(b.lns, ln)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if !b.track(c) {
				_ = c.Close()
				return
			}
			go func() {
				defer b.untrack(c)
				serve(c)
			}()
		}
	}()
	return ln.Addr().String(), nil
}

func startLoadBackends() (*loadBackends, error) {
	b := &loadBackends{conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
	var err error
	if b.source, err = b.listen(serveSource); err != nil {
		return nil, err
	}
	if b.sink, err = b.listen(serveSink); err != nil {
		b.close()
		return nil, err
	}
	if b.hole, err = b.listen(func(net.Conn) {
		// Never reads; the connection ends when this program closes it.
		<-b.done
	}); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (b *loadBackends) close() {
	select {
	case <-b.done:
	default:
		close(b.done)
	}
	for _, ln := range b.lns {
		_ = ln.Close()
	}
	b.mu.Lock()
	for c := range b.conns {
		_ = c.Close()
	}
	b.conns = nil
	b.mu.Unlock()
}

// serveSource waits for the request byte, then streams the pattern until a
// write fails.
func serveSource(c net.Conn) {
	var req [1]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	for off := int64(0); ; {
		n, err := c.Write(loadChunk(off, 256<<10))
		off += int64(n)
		if err != nil {
			return
		}
	}
}

// serveSink reads the length, hashes that many bytes, and answers the digest.
func serveSink(c net.Conn) {
	var head [8]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		return
	}
	n := int64(binary.BigEndian.Uint64(head[:]))
	h := sha256.New()
	if _, err := io.CopyBuffer(h, io.LimitReader(c, n), make([]byte, 256<<10)); err != nil {
		return
	}
	_, _ = c.Write(h.Sum(nil))
}

// transfer is one download or upload's outcome.
type transfer struct {
	Bytes int64   `json:"bytes"`
	Secs  float64 `json:"secs"`
	Error string  `json:"error,omitempty"`
}

type loadPhase struct {
	Name      string     `json:"name"`
	Conns     int        `json:"conns"`
	PerConn   int64      `json:"per_conn_bytes"`
	Gbps      float64    `json:"gbps"`
	Secs      float64    `json:"secs"`
	Cuts      int        `json:"cuts"`
	Transfers []transfer `json:"transfers"`
}

// stallReport says what became of a stalled consumer.
type stallReport struct {
	Kind string `json:"kind"`
	// ClosedAfterSecs: when the tunnel was seen closed (a write failed, or a
	// read after the phase returned an error or EOF); 0 if it was still open.
	ClosedAfterSecs float64 `json:"closed_after_secs"`
	Error           string  `json:"error,omitempty"`
	// Bytes written (upload) before it stopped.
	Written int64 `json:"written,omitempty"`
}

type loadReport struct {
	modeReport
	Phases []loadPhase   `json:"phases"`
	Stalls []stallReport `json:"stalls"`
	Cuts   int           `json:"cuts"`
}

type loadConfig struct {
	bytes, per         int64
	conns              int
	stallDown, stallUp bool
	phases             map[string]bool
}

// timedTransfer runs one transfer through a new single-use tunnel to addr and
// times it: move writes first and reads or writes the rest, counting the bytes
// moved in t.Bytes. The transfer ends at its last byte: the tunnel is then torn
// down by cancelling its context, as kube-apiserver does when a request ends.
// (Close would wait up to 10 s for a CLOSE_RSP that can queue behind the source's
// endless stream, which nothing reads any more.)
func timedTransfer(ctx context.Context, fe *frontend, addr string, move func(c net.Conn, t *transfer) error) transfer {
	start := time.Now()
	t := transfer{}
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c, err := tunnelConn(tctx, fe, addr)
	if err == nil {
		err = move(c, &t)
	}
	t.Secs = time.Since(start).Seconds()
	if err != nil {
		t.Error = err.Error()
	}
	return t
}

// loadDownload sends the request byte and reads n bytes, hashing them.
func loadDownload(ctx context.Context, fe *frontend, addr string, n int64) transfer {
	return timedTransfer(ctx, fe, addr, func(c net.Conn, t *transfer) error {
		if _, err := c.Write([]byte{1}); err != nil {
			return err
		}
		h := sha256.New()
		got, err := io.CopyBuffer(h, io.LimitReader(c, n), make([]byte, 256<<10))
		t.Bytes = got
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", got, n, err)
		}
		if got != n {
			return fmt.Errorf("cut after %d of %d bytes", got, n)
		}
		if !bytes.Equal(h.Sum(nil), loadSHA256(n)) {
			return fmt.Errorf("sha256 mismatch over %d bytes", n)
		}
		return nil
	})
}

// loadUpload sends the length and n pattern bytes, then checks the sink's digest.
func loadUpload(ctx context.Context, fe *frontend, addr string, n int64) transfer {
	return timedTransfer(ctx, fe, addr, func(c net.Conn, t *transfer) error {
		var head [8]byte
		binary.BigEndian.PutUint64(head[:], uint64(n))
		if _, err := c.Write(head[:]); err != nil {
			return err
		}
		for t.Bytes < n {
			chunk := loadChunk(t.Bytes, 32<<10) // io.Copy's write size
			if rest := n - t.Bytes; int64(len(chunk)) > rest {
				chunk = chunk[:rest]
			}
			k, err := c.Write(chunk)
			t.Bytes += int64(k)
			if err != nil {
				return fmt.Errorf("after %d of %d bytes: %w", t.Bytes, n, err)
			}
		}
		var digest [32]byte
		if _, err := io.ReadFull(c, digest[:]); err != nil {
			return fmt.Errorf("all %d bytes written, no digest: %w", n, err)
		}
		if !bytes.Equal(digest[:], loadSHA256(n)) {
			return fmt.Errorf("sha256 mismatch over %d bytes (sink saw %x)", n, digest[:])
		}
		return nil
	})
}

func runLoadPhase(ctx context.Context, name string, conns int, per int64, one func(context.Context) transfer) loadPhase {
	ph := loadPhase{Name: name, Conns: conns, PerConn: per, Transfers: make([]transfer, conns)}
	start := time.Now()
	parallel(conns, func(i int) {
		ph.Transfers[i] = one(ctx)
	})
	ph.Secs = time.Since(start).Seconds()
	var moved int64
	for _, t := range ph.Transfers {
		moved += t.Bytes
		if t.Error != "" {
			ph.Cuts++
		}
	}
	ph.Gbps = float64(moved) * 8 / ph.Secs / 1e9
	fmt.Fprintf(os.Stderr, "konnectivity-interop: load %s: %d×%d bytes in %.1fs (%.2f Gbit/s), %d cut\n",
		name, conns, per, ph.Secs, ph.Gbps, ph.Cuts)
	return ph
}

// stalled runs a never-reading download or a write-only upload to the black
// hole until stop is closed, and reports when its tunnel was seen closed.
func stalled(ctx context.Context, fe *frontend, kind, addr string, stop <-chan struct{}) stallReport {
	r := stallReport{Kind: kind}
	start := time.Now()
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c, err := tunnelConn(tctx, fe, addr)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer c.Close()
	closed := func(err error) {
		if r.ClosedAfterSecs == 0 {
			r.ClosedAfterSecs = time.Since(start).Seconds()
			r.Error = err.Error()
		}
	}
	switch kind {
	case "download":
		if _, err := c.Write([]byte{1}); err != nil {
			closed(err)
			return r
		}
		<-stop
		// Drain what is left; a tunnel that was closed ends in an error or EOF
		// quickly, a live one keeps streaming until the deadline.
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := io.Copy(io.Discard, c)
		if err == nil {
			err = io.EOF
		}
		if !isTimeout(err) {
			closed(err)
		}
	case "upload":
		done := make(chan struct{})
		go func() {
			defer close(done)
			var head [8]byte
			binary.BigEndian.PutUint64(head[:], 1<<40)
			if _, err := c.Write(head[:]); err != nil {
				closed(err)
				return
			}
			for {
				k, err := c.Write(loadChunk(r.Written, 32<<10))
				r.Written += int64(k)
				if err != nil {
					closed(err)
					return
				}
			}
		}()
		select {
		case <-done:
		case <-stop:
			cancel() // unblocks a write held by HTTP/2 flow control
			<-done
			if r.ClosedAfterSecs != 0 && time.Since(start).Seconds()-r.ClosedAfterSecs < 0.5 {
				// It failed only because we cancelled it.
				r.ClosedAfterSecs, r.Error = 0, ""
			}
		}
	}
	return r
}

func runLoad(fe *frontend, cfg loadConfig, timeout time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rep := loadReport{modeReport: newModeReport(), Phases: []loadPhase{}, Stalls: []stallReport{}}
	b, err := startLoadBackends()
	if err != nil {
		rep.Error = err.Error()
		printReport(&rep)
		return 1
	}
	defer b.close()
	loadSHA256(cfg.bytes)
	loadSHA256(cfg.per)

	down := func(n int64) func(context.Context) transfer {
		return func(ctx context.Context) transfer { return loadDownload(ctx, fe, b.source, n) }
	}
	up := func(n int64) func(context.Context) transfer {
		return func(ctx context.Context) transfer { return loadUpload(ctx, fe, b.sink, n) }
	}
	var stalls []<-chan stallReport
	stop := make(chan struct{})
	startStall := func(kind, addr string) {
		ch := make(chan stallReport, 1)
		go func() { ch <- stalled(ctx, fe, kind, addr, stop) }()
		stalls = append(stalls, ch)
		// Let it stall before the others start beside it.
		time.Sleep(500 * time.Millisecond)
	}
	for _, ph := range []struct {
		name  string
		conns int
		per   int64
		run   func(context.Context) transfer
	}{
		{"download-1", 1, cfg.bytes, down(cfg.bytes)},
		{"upload-1", 1, cfg.bytes, up(cfg.bytes)},
		{"download-parallel", cfg.conns, cfg.per, down(cfg.per)},
		{"upload-parallel", cfg.conns, cfg.per, up(cfg.per)},
	} {
		if !cfg.phases[ph.name] {
			continue
		}
		if ph.name == "download-parallel" && cfg.stallDown {
			startStall("download", b.source)
		}
		if ph.name == "upload-parallel" && cfg.stallUp {
			startStall("upload", b.hole)
		}
		p := runLoadPhase(ctx, ph.name, ph.conns, ph.per, ph.run)
		rep.Cuts += p.Cuts
		rep.Phases = append(rep.Phases, p)
	}
	close(stop)
	for _, ch := range stalls {
		rep.Stalls = append(rep.Stalls, <-ch)
	}
	if !printReport(&rep) || rep.Cuts > 0 {
		return 1
	}
	return 0
}
