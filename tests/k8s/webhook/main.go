// Command webhook is a validating admission webhook for the end-to-end scenario
// (tests/k8s/run.sh). It runs in the node's network namespace, so kube-apiserver can
// only call it through the Konnectivity tunnel. It denies any object whose name
// starts with "deny-" and allows everything else; its message names the path it was
// called on (/validate/service or /validate/url), so the test knows which webhook
// configuration, and so which egress selection of kube-apiserver, carried the call.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"konnectivity-rs/tests/k8s/internal/serving"
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
	sf := serving.Define("host:port")
	serving.Parse("webhook")
	mux := http.NewServeMux()
	mux.HandleFunc("/validate/", validate)
	mux.HandleFunc("/healthz", serving.Healthz)
	sf.Serve(mux, nil)
}
