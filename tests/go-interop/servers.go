package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Seeds for the deterministic byte patterns. Upload and download use
// different streams so that a proxy echoing the wrong direction cannot pass.
const (
	uploadSeed   uint64 = 0x75706c6f6164 // "upload"
	downloadSeed uint64 = 0x646f776e6c64 // "downld"
)

// patternReader yields `remaining` bytes of a deterministic pseudo-random
// stream (xorshift64*) derived from seed. It is fast enough (several GB/s)
// not to be the bottleneck of a loopback transfer.
type patternReader struct {
	state     uint64
	remaining int64
	block     []byte
	off       int
}

func newPatternReader(seed uint64, size int64) *patternReader {
	if seed == 0 {
		seed = 0x9e3779b97f4a7c15
	}
	return &patternReader{state: seed, remaining: size}
}

func (p *patternReader) refill() {
	if p.block == nil {
		p.block = make([]byte, 64<<10)
	}
	x := p.state
	for i := 0; i < len(p.block); i += 8 {
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		binary.LittleEndian.PutUint64(p.block[i:], x*0x2545f4914f6cdd1d)
	}
	p.state = x
	p.off = 0
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.remaining <= 0 {
		return 0, io.EOF
	}
	if p.block == nil || p.off == len(p.block) {
		p.refill()
	}
	if int64(len(b)) > p.remaining {
		b = b[:p.remaining]
	}
	n := copy(b, p.block[p.off:])
	p.off += n
	p.remaining -= int64(n)
	return n, nil
}

var (
	patternHashMu    sync.Mutex
	patternHashCache = map[[2]uint64]string{}
)

// patternSHA256 returns the hex sha256 of newPatternReader(seed, size).
func patternSHA256(seed uint64, size int64) string {
	key := [2]uint64{seed, uint64(size)}
	patternHashMu.Lock()
	defer patternHashMu.Unlock()
	if h, ok := patternHashCache[key]; ok {
		return h
	}
	h := sha256.New()
	if _, err := io.Copy(h, newPatternReader(seed, size)); err != nil {
		panic(err) // cannot happen: the reader never fails
	}
	s := hex.EncodeToString(h.Sum(nil))
	patternHashCache[key] = s
	return s
}

// uploadReply is the JSON body returned by POST /upload.
type uploadReply struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

const helloBody = "hello konnectivity"

// destinations are the backends the proxy-agent under test dials on loopback.
type destinations struct {
	httpAddr   string // 127.0.0.1:port of the HTTP server
	echoAddr   string // 127.0.0.1:port of the TCP echo server
	closedAddr string // 127.0.0.1:port where nothing listens

	httpSrv *http.Server
	echoLn  net.Listener
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
}

func startDestinations() (*destinations, error) {
	d := &destinations{conns: map[net.Conn]struct{}{}}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(helloBody)))
		_, _ = io.WriteString(w, helloBody)
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.CopyBuffer(h, r.Body, make([]byte, 64<<10))
		if err != nil {
			http.Error(w, fmt.Sprintf("reading body after %d bytes: %v", n, err), http.StatusBadRequest)
			return
		}
		if r.ContentLength >= 0 && n != r.ContentLength {
			http.Error(w, fmt.Sprintf("got %d bytes, Content-Length %d", n, r.ContentLength), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(uploadReply{Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil))})
	})
	mux.HandleFunc("GET /download", func(w http.ResponseWriter, r *http.Request) {
		size, err := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
		if err != nil || size < 0 || size > 16<<30 {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		_, _ = io.CopyBuffer(w, newPatternReader(downloadSeed, size), make([]byte, 64<<10))
	})

	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("http listener: %w", err)
	}
	d.httpAddr = httpLn.Addr().String()
	d.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		_ = d.httpSrv.Serve(httpLn)
	}()

	d.echoLn, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		d.close()
		return nil, fmt.Errorf("echo listener: %w", err)
	}
	d.echoAddr = d.echoLn.Addr().String()
	d.wg.Add(1)
	go d.serveEcho()

	closedLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		d.close()
		return nil, fmt.Errorf("closed-port listener: %w", err)
	}
	d.closedAddr = closedLn.Addr().String()
	_ = closedLn.Close()

	return d, nil
}

func (d *destinations) serveEcho() {
	defer d.wg.Done()
	for {
		c, err := d.echoLn.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		d.mu.Lock()
		d.conns[c] = struct{}{}
		d.mu.Unlock()
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer func() {
				d.mu.Lock()
				delete(d.conns, c)
				d.mu.Unlock()
				_ = c.Close()
			}()
			buf := make([]byte, 32<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

func (d *destinations) close() {
	if d.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = d.httpSrv.Shutdown(ctx)
		cancel()
		_ = d.httpSrv.Close()
	}
	if d.echoLn != nil {
		_ = d.echoLn.Close()
	}
	d.mu.Lock()
	for c := range d.conns {
		_ = c.Close()
	}
	d.mu.Unlock()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
	}
}

// getHello GETs /hello and checks the answer, like upload and download below: the
// client side of the HTTP destination.
func getHello(ctx context.Context, hc *http.Client, httpAddr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/hello", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET /hello: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("GET /hello: reading body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /hello: status %d, body %q", resp.StatusCode, body)
	}
	if string(body) != helloBody {
		return fmt.Errorf("GET /hello: body %q, want %q", body, helloBody)
	}
	return nil
}

// upload POSTs transferSize pattern bytes and checks the server's byte count
// and sha256. The returned duration covers dial, request and response.
func upload(ctx context.Context, hc *http.Client, httpAddr string) (time.Duration, error) {
	want := patternSHA256(uploadSeed, transferSize)
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+httpAddr+"/upload",
		newPatternReader(uploadSeed, transferSize))
	if err != nil {
		return 0, err
	}
	req.ContentLength = transferSize
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("POST /upload: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("POST /upload: reading reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("POST /upload: status %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var rep uploadReply
	if err := json.Unmarshal(body, &rep); err != nil {
		return 0, fmt.Errorf("POST /upload: bad reply %q: %w", body, err)
	}
	if rep.Bytes != transferSize || rep.SHA256 != want {
		return 0, fmt.Errorf("POST /upload: server received %d bytes sha256 %s, sent %d bytes sha256 %s",
			rep.Bytes, rep.SHA256, transferSize, want)
	}
	return elapsed, nil
}

// download GETs transferSize pattern bytes and checks count and sha256.
func download(ctx context.Context, hc *http.Client, httpAddr string) (time.Duration, error) {
	want := patternSHA256(downloadSeed, transferSize)
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("http://%s/download?size=%d", httpAddr, transferSize), nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET /download: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("GET /download: status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, resp.Body, make([]byte, 64<<10))
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("GET /download: body after %d bytes: %w", n, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if n != transferSize || got != want {
		return 0, fmt.Errorf("GET /download: received %d bytes sha256 %s, want %d bytes sha256 %s",
			n, got, transferSize, want)
	}
	return elapsed, nil
}
