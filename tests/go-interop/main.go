// Command konnectivity-interop drives a konnectivity proxy-server + proxy-agent
// pair with the upstream Go client library
// (sigs.k8s.io/apiserver-network-proxy/konnectivity-client, the library
// kube-apiserver links) and reports one PASS/FAIL line per scenario.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

const libraryModule = "sigs.k8s.io/apiserver-network-proxy/konnectivity-client"

type result struct {
	Name       string         `json:"name"`
	OK         bool           `json:"ok"`
	DurationMS float64        `json:"duration_ms"`
	Details    map[string]any `json:"details,omitempty"`
	Error      string         `json:"error,omitempty"`
	line       string         // key=value details for the PASS line
}

type jsonReport struct {
	Library  string   `json:"library"`
	Frontend string   `json:"frontend"`
	Passed   int      `json:"passed"`
	Failed   int      `json:"failed"`
	Results  []result `json:"results"`
}

func libraryVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == libraryModule {
				if m.Replace != nil {
					return m.Path + " " + m.Version + " => " + m.Replace.Path + " " + m.Replace.Version
				}
				return m.Path + " " + m.Version
			}
		}
	}
	return libraryModule + " (unknown version)"
}

func usageErr(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "konnectivity-interop: "+format+"\n", a...)
	os.Exit(2)
}

func main() {
	var (
		uds        = flag.String("uds", "", "proxy-server gRPC frontend unix socket (insecure, like kube-apiserver)")
		tcpAddr    = flag.String("tcp", "", "proxy-server gRPC frontend HOST:PORT (mTLS; needs -ca -cert -key)")
		caFile     = flag.String("ca", "", "CA bundle that signed the proxy-server's frontend certificate")
		certFile   = flag.String("cert", "", "client certificate for -tcp")
		keyFile    = flag.String("key", "", "client key for -tcp")
		serverName = flag.String("server-name", "", "TLS server name to verify (default: host of -tcp)")
		scenList   = flag.String("scenarios", "", "comma-separated scenarios to run (default all)")
		timeout    = flag.Duration("timeout", 120*time.Second, "overall time bound")
		jsonFile   = flag.String("json", "", "write results as JSON to this file")
		wait       = flag.Duration("wait", 0, "before the scenarios, retry a tunnelled GET /hello until it succeeds or this much time passes (0: no retry)")
		verbosity  = flag.Int("v", 0, "klog verbosity of the konnectivity-client library (logs go to stderr)")
		list       = flag.Bool("list", false, "print the scenario names and exit")
		benchEcho  = flag.String("bench-echo", "", "bench mode (with -bench-source): measure through this echo server instead of running scenarios; JSON on stdout")
		benchSrc   = flag.String("bench-source", "", "bench mode: the konnectivity bench source (8-byte length, then that many pattern bytes)")
		benchDials = flag.Int("bench-dials", 100, "bench mode: dials (+ first echoed byte)")
		benchRtts  = flag.Int("bench-rtts", 1000, "bench mode: 1-byte round trips on one connection")
		benchBytes = flag.Int64("bench-bytes", 8<<20, "bench mode: bytes per bulk download (split over -bench-conns in the parallel one)")
		benchConns = flag.Int("bench-conns", 16, "bench mode: connections of the parallel download")
		benchReps  = flag.Int("bench-reps", 1, "bench mode: repetitions of the downloads")
		victimEcho = flag.String("victim-echo", "", "victim mode: one tunnel to this echo server, driven over stdin/stdout (see victim.go)")
		victimWin  = flag.Duration("victim-window", 1500*time.Millisecond, "victim mode: how long each step collects what arrives")
		load       = flag.Bool("load", false, "load mode: sustained downloads and uploads against in-process backends, sha256-checked; JSON on stdout")
		loadBytes  = flag.Int64("load-bytes", 1<<30, "load mode: bytes of the single-connection download and upload")
		loadConns  = flag.Int("load-conns", 16, "load mode: connections of the parallel download and upload")
		loadPer    = flag.Int64("load-per", 128<<20, "load mode: bytes per connection of the parallel phases")
		loadPhases = flag.String("load-phases", "download-1,upload-1,download-parallel,upload-parallel", "load mode: phases to run")
		stallDown  = flag.Bool("load-stall-download", false, "load mode: beside the parallel download, a tunnel that never reads")
		stallUp    = flag.Bool("load-stall-upload", false, "load mode: beside the parallel upload, a tunnel to a destination that never reads")
	)
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: konnectivity-interop (-uds PATH | -tcp HOST:PORT -ca FILE -cert FILE -key FILE [-server-name NAME]) [-scenarios a,b] [-timeout 120s] [-json FILE] [-wait 0s] [-v N]\n\nscenarios:")
		for _, s := range allScenarios {
			fmt.Fprintf(os.Stderr, " %s", s.name)
		}
		fmt.Fprintf(os.Stderr, "\n\nflags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 0 {
		usageErr("unexpected arguments: %v", flag.Args())
	}
	if *list {
		for _, s := range allScenarios {
			fmt.Println(s.name)
		}
		return
	}

	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	_ = klogFlags.Set("v", fmt.Sprint(*verbosity))
	defer klog.Flush()

	selected, err := selectScenarios(*scenList)
	if err != nil {
		usageErr("%v", err)
	}

	var fe *frontend
	switch {
	case *uds != "" && *tcpAddr != "":
		usageErr("give either -uds or -tcp, not both")
	case *uds != "":
		fe = newUDSFrontend(*uds)
	case *tcpAddr != "":
		fe, err = newTLSFrontend(*tcpAddr, *caFile, *certFile, *keyFile, *serverName)
		if err != nil {
			usageErr("%v", err)
		}
	default:
		usageErr("one of -uds or -tcp is required")
	}

	if *victimEcho != "" {
		os.Exit(runVictim(fe, *victimEcho, *victimWin, *timeout))
	}
	if *load {
		if *loadBytes < 1 || *loadPer < 1 || *loadConns < 1 {
			usageErr("load mode needs -load-bytes, -load-per and -load-conns >= 1")
		}
		phases := map[string]bool{}
		for _, p := range strings.Split(*loadPhases, ",") {
			phases[strings.TrimSpace(p)] = true
		}
		os.Exit(runLoad(fe, loadConfig{
			bytes: *loadBytes, per: *loadPer, conns: *loadConns,
			stallDown: *stallDown, stallUp: *stallUp, phases: phases,
		}, *timeout))
	}
	if *benchEcho != "" || *benchSrc != "" {
		if *benchEcho == "" || *benchSrc == "" || *benchConns < 1 {
			usageErr("bench mode needs -bench-echo, -bench-source and -bench-conns >= 1")
		}
		os.Exit(runBench(fe, benchConfig{
			echo: *benchEcho, source: *benchSrc, dials: *benchDials, rtts: *benchRtts,
			bytes: *benchBytes, conns: *benchConns, reps: *benchReps,
		}, *timeout))
	}
	os.Exit(run(fe, selected, *timeout, *wait, *jsonFile))
}

func selectScenarios(list string) ([]scenario, error) {
	if strings.TrimSpace(list) == "" || list == "all" {
		return allScenarios, nil
	}
	byName := map[string]scenario{}
	for _, s := range allScenarios {
		byName[s.name] = s
	}
	var out []scenario
	seen := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if n == "" || seen[n] {
			continue
		}
		s, ok := byName[n]
		if !ok {
			names := make([]string, len(allScenarios))
			for i, s := range allScenarios {
				names[i] = s.name
			}
			return nil, fmt.Errorf("unknown scenario %q (known: %s)", n, strings.Join(names, ","))
		}
		seen[n] = true
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no scenarios selected")
	}
	return out, nil
}

func run(fe *frontend, selected []scenario, timeout, wait time.Duration, jsonFile string) int {
	lib := libraryVersion()
	fmt.Fprintf(os.Stderr, "konnectivity-interop: %s, frontend %s\n", lib, fe)

	overall, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	dest, err := startDestinations()
	if err != nil {
		fmt.Fprintf(os.Stderr, "konnectivity-interop: starting destination servers: %v\n", err)
		return 1
	}
	defer dest.close()
	fmt.Fprintf(os.Stderr, "konnectivity-interop: destinations http=%s echo=%s closed=%s\n",
		dest.httpAddr, dest.echoAddr, dest.closedAddr)
	e := &env{fe: fe, dest: dest}

	// Preflight: is anything listening on the frontend at all? Optionally
	// wait until a full tunnelled request works (agent connected).
	preflightErr := waitReady(overall, e, wait)

	var results []result
	passed, failed := 0, 0
	for _, s := range selected {
		var res result
		switch {
		case preflightErr != nil:
			res = result{Name: s.name, Error: preflightErr.Error()}
		case overall.Err() != nil:
			res = result{Name: s.name, Error: fmt.Sprintf("not run: overall timeout %v exceeded", timeout)}
		default:
			res = runScenario(overall, e, s)
		}
		if res.OK {
			passed++
			if res.line != "" {
				fmt.Printf("PASS %s %s\n", res.Name, res.line)
			} else {
				fmt.Printf("PASS %s\n", res.Name)
			}
		} else {
			failed++
			fmt.Printf("FAIL %s %s\n", res.Name, oneLine(res.Error))
		}
		results = append(results, res)
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)

	if jsonFile != "" {
		b, _ := json.MarshalIndent(jsonReport{
			Library: lib, Frontend: fe.String(), Passed: passed, Failed: failed, Results: results,
		}, "", "  ")
		if err := os.WriteFile(jsonFile, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "konnectivity-interop: writing %s: %v\n", jsonFile, err)
			return 1
		}
	}
	if failed > 0 {
		return 1
	}
	return 0
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// runScenario runs one scenario bounded by its own budget and by the overall
// deadline. A scenario that does not return shortly after its context ends
// is reported as failed and abandoned.
func runScenario(overall context.Context, e *env, s scenario) result {
	ctx, cancel := context.WithTimeout(overall, s.budget)
	defer cancel()
	rep := &report{}
	start := time.Now()
	errCh := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				errCh <- fmt.Errorf("panic: %v", p)
			}
		}()
		errCh <- s.run(ctx, e, rep)
	}()
	var err error
	select {
	case err = <-errCh:
	case <-ctx.Done():
		// Cancelling ctx tears down the scenario's tunnels; give it a moment
		// to report its own (more specific) error.
		select {
		case err = <-errCh:
			if err == nil {
				err = fmt.Errorf("scenario returned after its deadline")
			}
		case <-time.After(3 * time.Second):
			err = fmt.Errorf("timed out after %v (scenario hung)", time.Since(start).Round(time.Millisecond))
		}
		if overall.Err() != nil {
			err = fmt.Errorf("overall timeout reached: %w", err)
		}
	}
	elapsed := time.Since(start)
	res := result{Name: s.name, OK: err == nil, DurationMS: float64(elapsed.Microseconds()) / 1000}
	res.Details = rep.asMap()
	res.line = rep.String()
	if res.line != "" {
		res.line += " "
	}
	res.line += "time=" + elapsed.Round(time.Millisecond).String()
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

// waitReady checks that the frontend accepts connections and, if wait > 0,
// retries a full tunnelled GET /hello until it works or wait elapses.
func waitReady(ctx context.Context, e *env, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	attempt := 0
	for {
		attempt++
		err := e.fe.probe(ctx)
		if err != nil {
			err = fmt.Errorf("frontend %s unreachable: %w", e.fe, err)
		} else if wait > 0 {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = func() error {
				tun, err := e.fe.singleUse(pctx)
				if err != nil {
					return err
				}
				err = getHello(pctx, httpClientVia(tun.DialContext), e.dest.httpAddr)
				if err == nil {
					// Let the tunnel wind down before pctx is cancelled.
					_, _ = waitDone(pctx, tun, 2*time.Second)
				}
				return err
			}()
			cancel()
			if err != nil {
				err = fmt.Errorf("readiness probe (tunnelled GET /hello) failed: %w", err)
			}
		}
		if err == nil {
			if attempt > 1 {
				fmt.Fprintf(os.Stderr, "konnectivity-interop: ready after %d attempts\n", attempt)
			}
			return nil
		}
		if wait <= 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			return err
		}
	}
}
