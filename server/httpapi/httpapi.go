package httpapi

import (
	_ "embed"
	"encoding/json"
	"html/template"
	"net/http"
	"net/http/pprof"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/forestbus/forestbus/server"
)

// Option configures New.
type Option func(*options)

type options struct {
	pprof   bool
	grpc    *GRPC
	grpcSet bool
}

// WithPprof serves net/http/pprof under /debug/pprof/.
func WithPprof() Option { return func(o *options) { o.pprof = true } }

// WithGRPCMetrics registers g's metrics instead of GRPCMetrics()'s; nil
// registers none.
func WithGRPCMetrics(g *GRPC) Option {
	return func(o *options) { o.grpc, o.grpcSet = g, true }
}

type handler struct {
	srv    *server.Server
	self   atomic.Uint64 // this node's raft ID once known
	health healthCache
	rates  rates
	build  server.BuildInfo
}

//go:embed status.html
var statusHTML string

var statusPage = template.Must(template.New("status").Parse(statusHTML))

// New returns the HTTP handler of srv's observability endpoints (see the
// package documentation). Each handler has its own Prometheus registry.
func New(srv *server.Server, opts ...Option) http.Handler {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if !o.grpcSet {
		o.grpc = GRPCMetrics()
	}
	h := &handler{srv: srv, build: server.Build()}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newCollector(h),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if o.grpc != nil {
		reg.MustRegister(o.grpc.Metrics)
	}

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /status", h.serveStatus)
	mux.HandleFunc("GET /status.json", h.serveStatusJSON)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "status", http.StatusFound)
	})
	if o.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// status takes the status for /status and /status.json: with peer health
// and message rates.
func (h *handler) status(r *http.Request) Status {
	st := h.collect(r.Context(), true)
	h.rates.fill(&st)
	return st
}

func (h *handler) serveStatusJSON(w http.ResponseWriter, r *http.Request) {
	st := h.status(r)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(st)
}

func (h *handler) serveStatus(w http.ResponseWriter, r *http.Request) {
	st := h.status(r)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := statusPage.Execute(w, st); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
