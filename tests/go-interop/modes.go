package main

// Helpers the modes share: a connection through its own single-use tunnel,
// running a number of them at once, and the JSON report of -bench and -load.

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"sync"
)

// tunnelConn dials addr through a new single-use tunnel; closing the connection
// ends the tunnel.
func tunnelConn(ctx context.Context, fe *frontend, addr string) (net.Conn, error) {
	t, err := fe.singleUse(ctx)
	if err != nil {
		return nil, err
	}
	return t.DialContext(ctx, "tcp", addr)
}

// parallel runs one(0), ..., one(n-1) concurrently and returns when all have.
func parallel(n int, one func(i int)) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one(i)
		}()
	}
	wg.Wait()
}

// modeReport starts the JSON report that -bench and -load print on stdout.
type modeReport struct {
	Library string `json:"library"`
	Error   string `json:"error,omitempty"`
}

func newModeReport() modeReport { return modeReport{Library: libraryVersion()} }

// printReport prints rep as one line of JSON on stdout; false if it could not.
func printReport(rep any) bool {
	return json.NewEncoder(os.Stdout).Encode(rep) == nil
}
