package main

// Victim mode (-victim-echo): one tunnel opened with the real konnectivity-client to an
// echo server, driven by a test over stdin/stdout so that another (hostile) frontend can
// act between the steps. Used by the frontend-isolation end-to-end test.
//
// Protocol, one line each:
//
//	stdout  VICTIM READY                      the tunnel is open and echoed "hello"
//	stdin   echo <text>                       write <text>, then collect for -victim-window
//	stdout  VICTIM RECEIVED "<q>" CLOSED=<b>  everything that arrived (Go-quoted), and
//	                                          whether the connection ended
//
// EOF on stdin ends the program (exit 0).

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

func runVictim(fe *frontend, echoAddr string, window, timeout time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tun, err := fe.singleUse(ctx)
	if err != nil {
		fmt.Printf("VICTIM FAILED %v\n", err)
		return 1
	}
	conn, err := tun.DialContext(ctx, "tcp", echoAddr)
	if err != nil {
		fmt.Printf("VICTIM FAILED dial: %v\n", err)
		return 1
	}
	defer conn.Close()

	// One reader for the connection's whole life; the steps drain what it found.
	chunks := make(chan []byte, 64)
	ended := make(chan error, 1)
	go func() {
		for {
			buf := make([]byte, 4096)
			n, err := conn.Read(buf)
			if n > 0 {
				chunks <- buf[:n]
			}
			if err != nil {
				ended <- err
				return
			}
		}
	}()
	collect := func(want int, within time.Duration) (string, bool) {
		var got []byte
		closed := false
		deadline := time.After(within)
		for {
			select {
			case c := <-chunks:
				got = append(got, c...)
				if want > 0 && len(got) >= want {
					return string(got), closed
				}
			case <-ended:
				closed = true
				// Whatever was read before the end is still in chunks.
				for {
					select {
					case c := <-chunks:
						got = append(got, c...)
					default:
						return string(got), closed
					}
				}
			case <-deadline:
				return string(got), closed
			}
		}
	}

	if _, err := conn.Write([]byte("hello")); err != nil {
		fmt.Printf("VICTIM FAILED write: %v\n", err)
		return 1
	}
	if got, _ := collect(5, 10*time.Second); got != "hello" {
		fmt.Printf("VICTIM FAILED first echo: %q\n", got)
		return 1
	}
	fmt.Println("VICTIM READY")

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		text, ok := strings.CutPrefix(in.Text(), "echo ")
		if !ok {
			continue
		}
		if _, err := conn.Write([]byte(text)); err != nil {
			// A closed tunnel refuses writes: report what is left to read.
			got, _ := collect(0, window)
			fmt.Printf("VICTIM RECEIVED %q CLOSED=true\n", got)
			continue
		}
		got, closed := collect(0, window)
		fmt.Printf("VICTIM RECEIVED %q CLOSED=%v\n", got, closed)
	}
	return 0
}
