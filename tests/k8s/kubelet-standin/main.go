// Command kubelet-standin serves the part of the kubelet API that kube-apiserver
// uses for `kubectl logs`, `kubectl exec` and `kubectl port-forward`, and the resource
// metrics metrics-server scrapes for `kubectl top` (resource_metrics.go), on the node side
// of the end-to-end scenario (tests/k8s/run.sh). It runs in the node's network
// namespace, behind a firewall that only the Konnectivity tunnel passes.
//
// The exec and port-forward streams (SPDY and WebSocket protocol negotiation, stream
// set-up, status frames) are handled by k8s.io/cri-streaming, the streaming-server
// library that real container runtimes use; this program only routes the kubelet
// URLs onto it, like the kubelet does, and runs the "container" side: commands are
// real processes on the node, and port-forward dials 127.0.0.1:<port> on the node.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"konnectivity-rs/tests/k8s/internal/serving"
)

// runtime is the "container runtime" behind the streaming server: processes and
// sockets of the node itself.
type runtime struct{}

func (runtime) Exec(ctx context.Context, containerID string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, _ <-chan remotecommand.TerminalSize) error {
	if len(cmd) == 0 {
		return errors.New("no command")
	}
	log.Printf("exec in %s: %q (stdin=%v tty=%v)", containerID, cmd, in != nil, tty)
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	if in != nil {
		c.Stdin = in
	}
	if out != nil {
		c.Stdout = out
	}
	if errw != nil {
		c.Stderr = errw
	} else if tty {
		c.Stderr = out
	}
	// The stdin copy can outlive the process (the client may keep its side open);
	// do not let that hold the exec open.
	c.WaitDelay = 2 * time.Second
	err := c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return utilexec.CodeExitError{Err: err, Code: ee.ExitCode()}
	}
	return err
}

func (runtime) Attach(context.Context, string, io.Reader, io.WriteCloser, io.WriteCloser, bool, <-chan remotecommand.TerminalSize) error {
	return errors.New("attach is not supported by the kubelet stand-in")
}

func (runtime) PortForward(ctx context.Context, sandbox string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	log.Printf("port-forward for %s to %s", sandbox, addr)
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("port-forward to %s: %w", addr, err)
	}
	defer conn.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	_, err = io.Copy(stream, conn)
	_ = stream.Close()
	wg.Wait()
	return err
}

type kubelet struct {
	streams streaming.Server
	logText string
}

// parts splits "/prefix/a/b/c" into [a b c] (want of them, or nil).
func parts(path, prefix string, want int) []string {
	p := strings.Split(strings.Trim(strings.TrimPrefix(path, prefix), "/"), "/")
	if len(p) != want {
		return nil
	}
	for _, s := range p {
		if s == "" {
			return nil
		}
	}
	return p
}

// serveToken hands the request to the streaming server under the one-time URL it
// issued, as the kubelet does (it proxies there; here the server is in-process).
func (k *kubelet) serveToken(w http.ResponseWriter, r *http.Request, tokenURL string) {
	u, err := url.Parse(tokenURL)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	r.URL.Path = u.Path
	r.URL.RawPath = ""
	k.streams.ServeHTTP(w, r)
}

func (k *kubelet) containerLogs(w http.ResponseWriter, r *http.Request) {
	p := parts(r.URL.Path, "/containerLogs/", 3)
	if p == nil {
		http.NotFound(w, r)
		return
	}
	log.Printf("logs of %s/%s/%s (%s)", p[0], p[1], p[2], r.URL.RawQuery)
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "%s\n", k.logText)
	fmt.Fprintf(w, "served for container %s of pod %s/%s by the kubelet stand-in\n", p[2], p[0], p[1])
}

// streamHandler routes a kubelet streaming URL, prefix and want path parts, to the
// streaming server: request asks it for the one-time URL of the request r, given the
// parts joined with "/" (the container ID of an exec, the pod sandbox ID of a
// port-forward).
func (k *kubelet) streamHandler(prefix string, want int, request func(r *http.Request, id string) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p := parts(r.URL.Path, prefix, want)
		if p == nil {
			http.NotFound(w, r)
			return
		}
		tokenURL, err := request(r, strings.Join(p, "/"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		k.serveToken(w, r, tokenURL)
	}
}

// execURL asks for the streaming URL of an exec in container id (/exec/ns/pod/container).
func (k *kubelet) execURL(r *http.Request, id string) (string, error) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		return "", err
	}
	resp, err := k.streams.GetExec(&runtimeapi.ExecRequest{
		ContainerId: id,
		Cmd:         r.URL.Query()["command"],
		Tty:         opts.TTY,
		Stdin:       opts.Stdin,
		Stdout:      opts.Stdout,
		Stderr:      opts.Stderr,
	})
	return resp.GetUrl(), err
}

// portForwardURL asks for the streaming URL of a port-forward to pod sandbox id
// (/portForward/ns/pod).
func (k *kubelet) portForwardURL(r *http.Request, id string) (string, error) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		return "", err
	}
	resp, err := k.streams.GetPortForward(&runtimeapi.PortForwardRequest{PodSandboxId: id, Port: opts.Ports})
	return resp.GetUrl(), err
}

// serveEcho answers every line with "echo from the node: <line>".
func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				log.Printf("echo: %q", sc.Text())
				if _, err := fmt.Fprintf(c, "echo from the node: %s\n", sc.Text()); err != nil {
					return
				}
			}
		}()
	}
}

func main() {
	sf := serving.Define("address to serve the kubelet API on (host:10250)")
	clientCA := flag.String("client-ca-file", "", "CA that signs kube-apiserver's kubelet client certificate (required from clients)")
	logText := flag.String("log-text", "hello from the node", "text returned as the container log")
	echoListen := flag.String("echo-listen", "", "if set, a line-echo TCP server (the pod's port for port-forward), e.g. 127.0.0.1:7000")
	resourceContainers := flag.String("resource-containers", "konn-e2e/konn-pod/app", "containers reported by /metrics/resource, comma-separated namespace/pod/container (the default is the scenario's pod)")
	serving.Parse("kubelet-standin")

	cfg := streaming.DefaultConfig
	cfg.Addr = *sf.Listen
	cfg.BaseURL = &url.URL{Scheme: "https", Host: *sf.Listen, Path: "/cri/"}
	cfg.StreamIdleTimeout = 5 * time.Minute
	streams, err := streaming.NewServer(cfg, runtime{})
	if err != nil {
		log.Fatal(err)
	}
	k := &kubelet{streams: streams, logText: *logText}
	if *echoListen != "" {
		ln, err := net.Listen("tcp", *echoListen)
		if err != nil {
			log.Fatal(err)
		}
		go serveEcho(ln)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", serving.Healthz)
	mux.HandleFunc("/containerLogs/", k.containerLogs)
	mux.HandleFunc("/exec/", k.streamHandler("/exec/", 3, k.execURL))
	mux.HandleFunc("/portForward/", k.streamHandler("/portForward/", 2, k.portForwardURL))
	containers, err := parseContainers(*resourceContainers)
	if err != nil {
		log.Fatal(err)
	}
	// Everything "started" an hour ago: the CPU counters are well above zero.
	mux.Handle("/metrics/resource", &resourceMetrics{containers: containers, start: time.Now().Add(-time.Hour).Truncate(time.Second)})

	pool := x509.NewCertPool()
	pem, err := os.ReadFile(*clientCA)
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		log.Fatalf("client CA %s: %v", *clientCA, err)
	}
	logged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who := "-"
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			who = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		log.Printf("%s %s from %s (client cert %q)", r.Method, r.URL.Path, r.RemoteAddr, who)
		mux.ServeHTTP(w, r)
	})
	// Everything but /healthz needs kube-apiserver's kubelet client certificate.
	sf.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && (r.TLS == nil || len(r.TLS.PeerCertificates) == 0) {
			http.Error(w, "Unauthorized: a client certificate is required", http.StatusUnauthorized)
			return
		}
		logged.ServeHTTP(w, r)
	}), &tls.Config{
		ClientCAs:  pool,
		ClientAuth: tls.VerifyClientCertIfGiven,
		MinVersion: tls.VersionTLS12,
	})
}
