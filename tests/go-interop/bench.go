package main

// Bench mode (-bench-echo, -bench-source): the measurements `konnectivity bench`
// takes through each proxy-server + proxy-agent pairing, taken here through the
// real konnectivity-client, one single-use tunnel per connection as kube-apiserver's
// egress selector makes them. Prints one JSON object on stdout.
//
// The backends are the bench's own: an echo server, and a source that reads an
// 8-byte big-endian length n and sends n bytes of the bench's test pattern (byte at
// offset o: p*31 + p>>11 modulo 256, with p = o modulo 2^20 + 13), which every
// download checks. Every transfer
// writes first (the length, or the echoed byte): the client registers a connection
// only after its reader has moved on, so data a backend sent first could be dropped.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

type benchReport struct {
	modeReport
	DialUS      []float64 `json:"dial_us"`
	RttUS       []float64 `json:"rtt_us"`
	Bulk1Gbps   []float64 `json:"bulk_1conn_gbps"`
	BulkNGbps   []float64 `json:"bulk_parallel_gbps"`
	Connections int       `json:"parallel"`
}

type benchConfig struct {
	echo, source string
	dials, rtts  int
	bytes        int64
	conns, reps  int
}

// patternPeriod is the period of the bench's test pattern (odd, so that no read or
// write size lines up with it).
const patternPeriod = 1<<20 + 13

func patternByte(off uint64) byte {
	p := off % patternPeriod
	return byte(p*31 + p>>11)
}

func echoByte(c net.Conn, b byte) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{b}); err != nil {
		return err
	}
	r := make([]byte, 1)
	if _, err := io.ReadFull(c, r); err != nil {
		return err
	}
	if r[0] != b {
		return fmt.Errorf("echo returned %d instead of %d", r[0], b)
	}
	return nil
}

// benchDownload asks the source for n bytes and checks them; returns when the last arrived.
func benchDownload(ctx context.Context, fe *frontend, source string, n int64) (time.Time, error) {
	c, err := tunnelConn(ctx, fe, source)
	if err != nil {
		return time.Time{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30*time.Second + time.Duration(n/1_000_000)*time.Second))
	var head [8]byte
	binary.BigEndian.PutUint64(head[:], uint64(n))
	if _, err := c.Write(head[:]); err != nil {
		return time.Time{}, err
	}
	buf := make([]byte, 256*1024)
	var off int64
	for off < n {
		k, err := c.Read(buf)
		for i := 0; i < k; i++ {
			if buf[i] != patternByte(uint64(off)+uint64(i)) {
				return time.Time{}, fmt.Errorf("corrupted data at offset %d", off+int64(i))
			}
		}
		off += int64(k)
		if err != nil && off < n {
			return time.Time{}, fmt.Errorf("after %d of %d bytes: %w", off, n, err)
		}
	}
	return time.Now(), nil
}

func benchBulk(ctx context.Context, fe *frontend, source string, conns int, per int64) (float64, error) {
	start := time.Now()
	errs := make([]error, conns)
	ends := make([]time.Time, conns)
	parallel(conns, func(i int) {
		ends[i], errs[i] = benchDownload(ctx, fe, source, per)
	})
	last := start
	for i := range errs {
		if errs[i] != nil {
			return 0, errs[i]
		}
		if ends[i].After(last) {
			last = ends[i]
		}
	}
	return float64(per*int64(conns)) * 8 / last.Sub(start).Seconds() / 1e9, nil
}

func runBenchMeasurements(ctx context.Context, fe *frontend, cfg benchConfig, r *benchReport) error {
	for i := 0; i < cfg.dials; i++ {
		t0 := time.Now()
		c, err := tunnelConn(ctx, fe, cfg.echo)
		if err != nil {
			return fmt.Errorf("dial %d: %w", i, err)
		}
		err = echoByte(c, byte(i%251))
		d := time.Since(t0)
		c.Close()
		if err != nil {
			return fmt.Errorf("dial %d: %w", i, err)
		}
		r.DialUS = append(r.DialUS, float64(d.Nanoseconds())/1e3)
	}
	c, err := tunnelConn(ctx, fe, cfg.echo)
	if err != nil {
		return fmt.Errorf("round trips: %w", err)
	}
	for i := 0; i < cfg.rtts; i++ {
		t0 := time.Now()
		if err := echoByte(c, byte(i%253)); err != nil {
			c.Close()
			return fmt.Errorf("round trip %d: %w", i, err)
		}
		r.RttUS = append(r.RttUS, float64(time.Since(t0).Nanoseconds())/1e3)
	}
	c.Close()
	per := cfg.bytes / int64(cfg.conns)
	for rep := 0; rep < cfg.reps; rep++ {
		g, err := benchBulk(ctx, fe, cfg.source, 1, cfg.bytes)
		if err != nil {
			return fmt.Errorf("bulk 1 conn: %w", err)
		}
		r.Bulk1Gbps = append(r.Bulk1Gbps, g)
		g, err = benchBulk(ctx, fe, cfg.source, cfg.conns, per)
		if err != nil {
			return fmt.Errorf("bulk %d conns: %w", cfg.conns, err)
		}
		r.BulkNGbps = append(r.BulkNGbps, g)
	}
	return nil
}

func runBench(fe *frontend, cfg benchConfig, timeout time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r := benchReport{modeReport: newModeReport(), Connections: cfg.conns}
	if err := runBenchMeasurements(ctx, fe, cfg, &r); err != nil {
		r.Error = err.Error()
	}
	if !printReport(&r) {
		return 1
	}
	return 0
}
