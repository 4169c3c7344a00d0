// Package metrics exposes ElChat's Prometheus metrics through the official
// client library. Every hot-path method is a pre-resolved counter or
// histogram (an atomic add): no label lookup, allocation or lock per
// message.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is one node's registry and instruments. It implements
// hub.Metrics and server.Metrics.
type Metrics struct {
	reg *prometheus.Registry

	joinLobby, joinChat, joinOther prometheus.Counter
	messagesIn                     prometheus.Counter
	framesOut                      prometheus.Counter
	busDelivered, busErrors        prometheus.Counter
	connects                       prometheus.Counter
	rejected                       *prometheus.CounterVec
	batchSize                      prometheus.Histogram
	batchLatency                   prometheus.Histogram
	busLag                         prometheus.Histogram
	busBatch                       prometheus.Histogram

	webhookSent, webhookFailed    prometheus.Counter
	webhookDead, webhookCancelled prometheus.Counter
	webhookDelay                  prometheus.Histogram
}

// New registers every ElChat metric plus the Go and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	joins := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "elchat_joins_total", Help: "Channel joins accepted, by topic kind.",
	}, []string{"kind"})
	m := &Metrics{
		reg:       reg,
		joinLobby: joins.WithLabelValues("lobby"),
		joinChat:  joins.WithLabelValues("chat"),
		joinOther: joins.WithLabelValues("other"),
		messagesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "elchat_messages_in_total", Help: "Channel events received from clients (heartbeats, joins and leaves excluded).",
		}),
		framesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "elchat_frames_out_total", Help: "Broadcast frames handed to local connections.",
		}),
		busDelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "elchat_bus_delivered_total", Help: "Frames received from other nodes through the bus.",
		}),
		busErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "elchat_bus_publish_errors_total", Help: "Bus publishes that failed (Redis down or queue full).",
		}),
		connects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "elchat_connects_total", Help: "WebSocket upgrades accepted.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "elchat_handshakes_rejected_total", Help: "Upgrades refused, by reason.",
		}, []string{"reason"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "elchat_store_batch_size", Help: "Messages per group-commit transaction.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
		}),
		batchLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "elchat_store_batch_seconds", Help: "Time to commit one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	m.busLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "elchat_bus_publish_lag_seconds", Help: "Time from a broadcast being handed to the bus to Redis acknowledging its PUBLISH.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
	m.busBatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "elchat_bus_publish_batch_size", Help: "PUBLISHes per pipelined round trip to Redis.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
	})
	m.webhookSent = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "elchat_webhook_sent_total", Help: "Webhook events delivered (receiver answered 2xx).",
	})
	m.webhookFailed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "elchat_webhook_failed_total", Help: "Webhook attempts that failed and will be retried.",
	})
	m.webhookDead = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "elchat_webhook_dead_total", Help: "Webhook events given up on (dead-lettered) by this node.",
	})
	m.webhookCancelled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "elchat_webhook_cancelled_total", Help: "Webhook events dropped unsent because their messages were read.",
	})
	m.webhookDelay = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "elchat_webhook_delivery_seconds", Help: "Time from a webhook event falling due to the receiver's 2xx.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 18),
	})
	f(m.webhookSent)
	f(m.webhookFailed)
	f(m.webhookDead)
	f(m.webhookCancelled)
	f(m.webhookDelay)
	f(m.busLag)
	f(m.busBatch)
	f(joins)
	f(m.messagesIn)
	f(m.framesOut)
	f(m.busDelivered)
	f(m.busErrors)
	f(m.connects)
	f(m.rejected)
	f(m.batchSize)
	f(m.batchLatency)
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Register adds another collector, e.g. a gauge read from the transport.
func (m *Metrics) Register(c prometheus.Collector) { m.reg.MustRegister(c) }

// GaugeFunc registers a gauge whose value is read at scrape time.
func (m *Metrics) GaugeFunc(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// CounterFunc registers a counter whose value is read at scrape time.
func (m *Metrics) CounterFunc(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

func (m *Metrics) Join(kind string) {
	switch kind {
	case "lobby":
		m.joinLobby.Inc()
	case "chat":
		m.joinChat.Inc()
	default:
		m.joinOther.Inc()
	}
}

func (m *Metrics) MessageIn()      { m.messagesIn.Inc() }
func (m *Metrics) FramesOut(n int) { m.framesOut.Add(float64(n)) }
func (m *Metrics) BusDelivered()   { m.busDelivered.Inc() }
func (m *Metrics) BusError()       { m.busErrors.Inc() }
func (m *Metrics) Connected()      { m.connects.Inc() }

// HandshakeRejected counts a refused upgrade. Reasons form a small fixed
// set (see server.authorize), so the label stays bounded.
func (m *Metrics) HandshakeRejected(reason string) { m.rejected.WithLabelValues(reason).Inc() }

// BusPublished records one pipelined publish batch; pass it as the Redis
// bus's OnPublish.
func (m *Metrics) BusPublished(frames int, lag time.Duration) {
	m.busBatch.Observe(float64(frames))
	m.busLag.Observe(lag.Seconds())
}

// StoreBatch records one group commit; pass it as the store's observer.
func (m *Metrics) StoreBatch(size int, d time.Duration) {
	m.batchSize.Observe(float64(size))
	m.batchLatency.Observe(d.Seconds())
}

// WebhookSent, WebhookFailed, WebhookDead and WebhookCancelled implement
// webhook.Metrics.
func (m *Metrics) WebhookSent(delay time.Duration) {
	m.webhookSent.Inc()
	m.webhookDelay.Observe(delay.Seconds())
}
func (m *Metrics) WebhookFailed()         { m.webhookFailed.Inc() }
func (m *Metrics) WebhookDead()           { m.webhookDead.Inc() }
func (m *Metrics) WebhookCancelled(n int) { m.webhookCancelled.Add(float64(n)) }
