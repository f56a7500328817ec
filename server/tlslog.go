package server

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
)

// handshakeLogEvery is the least time between two lines of handshakeLog.
const handshakeLogEvery = 10 * time.Second

// handshakeLog wraps a node's TLS credentials to log the handshakes that
// fail: grpc-go tells them only through its own logger, off by default,
// so a peer or client with a wrong certificate showed only on its own
// side. At most one line every handshakeLogEvery, with the number of
// failures since the last.
type handshakeLog struct {
	credentials.TransportCredentials
	log *slog.Logger

	mu     sync.Mutex
	last   time.Time
	missed int
}

func (h *handshakeLog) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := h.TransportCredentials.ServerHandshake(c)
	switch {
	case err == nil:
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		// Closed before a word: a TCP health check or a port scan.
		h.log.Debug("TLS handshake: connection closed before it began", "from", c.RemoteAddr().String())
	default:
		h.note(c.RemoteAddr(), err)
	}
	return conn, info, err
}

func (h *handshakeLog) note(from net.Addr, err error) {
	h.mu.Lock()
	now := time.Now()
	if now.Sub(h.last) < handshakeLogEvery {
		h.missed++
		h.mu.Unlock()
		return
	}
	missed := h.missed
	h.last, h.missed = now, 0
	h.mu.Unlock()
	h.log.Warn("TLS handshake failed: a client or peer without a certificate this node accepts, or one that does not speak TLS", "from", from.String(), "err", err, "earlier_failures_not_logged", missed)
}

// Clone keeps the logging.
func (h *handshakeLog) Clone() credentials.TransportCredentials {
	return &handshakeLog{TransportCredentials: h.TransportCredentials.Clone(), log: h.log}
}
