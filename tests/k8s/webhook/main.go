// Command webhook is a validating admission webhook for the end-to-end scenario
// (tests/k8s/run.sh). It runs in the node's network namespace, so kube-apiserver can
// only call it through the Konnectivity tunnel. It denies any object whose name
// starts with "deny-" and allows everything else; its message names the path it was
// called on (/validate/service or /validate/url), so the test knows which webhook
// configuration, and so which egress selection of kube-apiserver, carried the call.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func validate(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, fmt.Sprintf("not an AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	req := review.Request
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if strings.HasPrefix(req.Name, "deny-") {
		resp.Allowed = false
		resp.Result = &metav1.Status{
			Code:    http.StatusForbidden,
			Message: fmt.Sprintf("konnectivity-e2e webhook on the node says no to %s %q (called on %s)", req.Kind.Kind, req.Name, r.URL.Path),
		}
	}
	log.Printf("%s %s: %s %s/%s %s: allowed=%v", r.URL.Path, r.RemoteAddr, req.Operation, req.Namespace, req.Name, req.Kind.Kind, resp.Allowed)
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func main() {
	listen := flag.String("listen", "", "host:port")
	cert := flag.String("tls-cert-file", "", "serving certificate")
	key := flag.String("tls-private-key-file", "", "serving key")
	flag.Parse()
	log.SetPrefix("webhook: ")
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	mux := http.NewServeMux()
	mux.HandleFunc("/validate/", validate)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("serving on https://%s", *listen)
	log.Fatal(srv.ListenAndServeTLS(*cert, *key))
}
