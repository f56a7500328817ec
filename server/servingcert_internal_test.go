package server

import (
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestServingCertificateSurvivesCallbacks: a GetConfigForClient that needs
// a real handshake (it reads hello.Conn) panics when asked without one;
// ServingCertificate then says it does not know, and the status page or
// the scrape that asked goes on.
func TestServingCertificateSurvivesCallbacks(t *testing.T) {
	s := &Server{cfg: Config{TLS: &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		_ = h.Conn.RemoteAddr() // nil Conn: panics
		return nil, nil
	}}}}
	assert.NotPanics(t, func() { assert.Nil(t, s.ServingCertificate()) })
	assert.Nil(t, (&Server{}).ServingCertificate(), "no TLS")
}
