package main

// The kubelet's resource metrics endpoint, /metrics/resource: what metrics-server
// scrapes from every node. The names, labels, HELP texts and timestamps follow
// kubelet's resource metrics collector (pkg/kubelet/metrics/collectors/resource_metrics.go);
// the usage is synthetic and steady, so the rate metrics-server computes from two
// scrapes is known in advance: the node uses nodeCPU cores and nodeMemory bytes, every
// listed container containerCPU cores and containerMemory bytes.

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	nodeCPU         = 0.25      // cores: `kubectl top node` shows 250m
	nodeMemory      = 512 << 20 // bytes: 512Mi
	containerCPU    = 0.05      // cores: `kubectl top pod` shows 50m
	containerMemory = 32 << 20  // bytes: 32Mi
)

// container is one "namespace/pod/container" of --resource-containers.
type container struct{ namespace, pod, name string }

func parseContainers(s string) ([]container, error) {
	var cs []container
	for _, item := range strings.Split(s, ",") {
		if item == "" {
			continue
		}
		p := strings.Split(item, "/")
		if len(p) != 3 || p[0] == "" || p[1] == "" || p[2] == "" {
			return nil, fmt.Errorf("--resource-containers: %q is not namespace/pod/container", item)
		}
		cs = append(cs, container{p[0], p[1], p[2]})
	}
	return cs, nil
}

type resourceMetrics struct {
	containers []container
	// start is when the node and every container "started": the CPU counters count from it.
	start time.Time
}

// float formats like the Prometheus text encoder kubelet uses.
func float(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

func (m *resourceMetrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// One timestamp (milliseconds, as exposed) for every sample: the counters are
	// computed from it, so the rate between two scrapes is exact.
	now := time.Now().UnixMilli()
	up := float64(now-m.start.UnixMilli()) / 1000
	ts := strconv.FormatInt(now, 10)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	var b strings.Builder
	family := func(name, help, typ string) {
		fmt.Fprintf(&b, "# HELP %s [STABLE] %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	labels := func(c container) string {
		return fmt.Sprintf(`{container=%q,namespace=%q,pod=%q}`, c.name, c.namespace, c.pod)
	}
	if len(m.containers) > 0 {
		family("container_cpu_usage_seconds_total", "Cumulative cpu time consumed by the container in core-seconds", "counter")
		for _, c := range m.containers {
			fmt.Fprintf(&b, "container_cpu_usage_seconds_total%s %s %s\n", labels(c), float(containerCPU*up), ts)
		}
		family("container_memory_working_set_bytes", "Current working set of the container in bytes", "gauge")
		for _, c := range m.containers {
			fmt.Fprintf(&b, "container_memory_working_set_bytes%s %s %s\n", labels(c), float(containerMemory), ts)
		}
		family("container_start_time_seconds", "Start time of the container since unix epoch in seconds", "gauge")
		for _, c := range m.containers {
			fmt.Fprintf(&b, "container_start_time_seconds%s %s\n", labels(c), float(float64(m.start.UnixNano())/1e9))
		}
	}
	family("node_cpu_usage_seconds_total", "Cumulative cpu time consumed by the node in core-seconds", "counter")
	fmt.Fprintf(&b, "node_cpu_usage_seconds_total %s %s\n", float(nodeCPU*up), ts)
	family("node_memory_working_set_bytes", "Current working set of the node in bytes", "gauge")
	fmt.Fprintf(&b, "node_memory_working_set_bytes %s %s\n", float(nodeMemory), ts)
	if len(m.containers) > 0 {
		// Pods sum their containers.
		type podRef struct{ namespace, pod string }
		n := map[podRef]int{}
		var order []podRef
		for _, c := range m.containers {
			p := podRef{c.namespace, c.pod}
			if n[p] == 0 {
				order = append(order, p)
			}
			n[p]++
		}
		family("pod_cpu_usage_seconds_total", "Cumulative cpu time consumed by the pod in core-seconds", "counter")
		for _, p := range order {
			fmt.Fprintf(&b, "pod_cpu_usage_seconds_total{namespace=%q,pod=%q} %s %s\n", p.namespace, p.pod, float(containerCPU*up*float64(n[p])), ts)
		}
		family("pod_memory_working_set_bytes", "Current working set of the pod in bytes", "gauge")
		for _, p := range order {
			fmt.Fprintf(&b, "pod_memory_working_set_bytes{namespace=%q,pod=%q} %s %s\n", p.namespace, p.pod, float(float64(containerMemory*n[p])), ts)
		}
	}
	// kubelet 1.36 also has scrape_error, deprecated in 1.29 and hidden since.
	family("resource_scrape_error", "1 if there was an error while getting container metrics, 0 otherwise", "gauge")
	b.WriteString("resource_scrape_error 0\n")
	if _, err := io.WriteString(w, b.String()); err != nil {
		log.Printf("metrics/resource: %v", err)
	}
}
