// Package serving holds what the node-side stand-ins of the end-to-end scenario
// (kubelet-standin, webhook; tests/k8s/run.sh) share: the flags that say where and
// with which certificate they serve HTTPS, their log format, the /healthz answer
// run.sh polls, and serving until it fails.
package serving

import (
	"crypto/tls"
	"flag"
	"io"
	"log"
	"net/http"
	"time"
)

// Flags are the serving flags: -listen, -tls-cert-file, -tls-private-key-file.
type Flags struct {
	Listen, Cert, Key *string
}

// Define registers the serving flags; listenHelp describes -listen.
func Define(listenHelp string) Flags {
	return Flags{
		Listen: flag.String("listen", "", listenHelp),
		Cert:   flag.String("tls-cert-file", "", "serving certificate"),
		Key:    flag.String("tls-private-key-file", "", "serving key"),
	}
}

// Parse parses the command line and starts every log line with name and the time.
func Parse(name string) {
	flag.Parse()
	log.SetPrefix(name + ": ")
	log.SetFlags(log.Ltime | log.Lmicroseconds)
}

// Healthz answers "ok".
func Healthz(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }

// Serve serves handler over HTTPS on -listen with the flags' certificate and key and
// tlsConfig (nil: the defaults). It returns only by ending the program, when serving
// fails.
func (f Flags) Serve(handler http.Handler, tlsConfig *tls.Config) {
	srv := &http.Server{Addr: *f.Listen, Handler: handler, TLSConfig: tlsConfig, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("serving on https://%s", *f.Listen)
	log.Fatal(srv.ListenAndServeTLS(*f.Cert, *f.Key))
}
