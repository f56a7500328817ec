// Package tlsfiles builds TLS configurations from PEM files, as fbnode's
// and fbctl's -tls-* flags name them.
package tlsfiles

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// Files names the PEM files of a TLS setup.
type Files struct {
	// CA holds the certificates of the authorities to trust: servers'
	// (and, on a node that requires them, clients') certificates must be
	// signed by one. "": the system's roots (for a client).
	CA string
	// Cert and Key are this side's certificate (chain) and private key:
	// a node's, required to serve TLS; a client's, when the nodes
	// require one.
	Cert, Key string
}

// Set reports whether any file is named.
func (f Files) Set() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

var errPair = errors.New("tls: a certificate and its key go together (-tls-cert and -tls-key)")

// contents is what the files held when read: CA, Cert and Key, nil for a
// file not named.
type contents [3][]byte

func (c contents) equal(o contents) bool {
	for i := range c {
		if !bytes.Equal(c[i], o[i]) {
			return false
		}
	}
	return true
}

// read reads the files named, each once.
func (f Files) read() (contents, error) {
	var c contents
	if (f.Cert == "") != (f.Key == "") {
		return c, errPair
	}
	for i, name := range [3]string{f.CA, f.Cert, f.Key} {
		if name == "" {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return c, fmt.Errorf("tls: %w", err)
		}
		c[i] = b
	}
	return c, nil
}

// pair parses the certificate and key read (none when neither is named).
func (f Files) pair(c contents) ([]tls.Certificate, error) {
	switch {
	case f.Cert == "" && f.Key == "":
		return nil, nil
	case f.Cert == "" || f.Key == "":
		return nil, errPair
	}
	if err := wholePEM(c[1], f.Cert); err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(c[1], c[2])
	if err != nil {
		return nil, fmt.Errorf("tls: %s and %s: %w", f.Cert, f.Key, err)
	}
	return []tls.Certificate{pair}, nil
}

// pool parses the authorities read (nil, the system's roots, when CA is
// not named).
func (f Files) pool(c contents) (*x509.CertPool, error) {
	if f.CA == "" {
		return nil, nil
	}
	if err := wholePEM(c[0], f.CA); err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(c[0]) {
		return nil, fmt.Errorf("tls: %s holds no PEM certificate", f.CA)
	}
	return p, nil
}

// wholePEM refuses a file that ends in a cut-off PEM block: crypto/tls
// and x509.CertPool skip such a block, so a bundle caught half rewritten
// would be taken without its last authority, or a chain without its last
// certificate. Anything else they accept is accepted (text between
// blocks, blocks of other types, a certificate x509 cannot parse, which
// a pool skips as it does in the system's roots).
func wholePEM(b []byte, name string) error {
	rest := b
	for {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
	}
	// pem.Decode's own rule: a block begins at the start of a line.
	// A file cut inside a block's first line ("-----BEG") ends in a
	// line, not ended by a newline, that begins what a header begins.
	last := rest[bytes.LastIndexByte(rest, '\n')+1:]
	if bytes.HasPrefix(rest, []byte("-----BEGIN ")) || bytes.Contains(rest, []byte("\n-----BEGIN ")) ||
		(len(last) > 0 && bytes.HasPrefix([]byte("-----BEGIN "), last)) {
		return fmt.Errorf("tls: %s ends in a cut-off PEM block (replace such files by renaming a whole new one over them)", name)
	}
	return nil
}

// parse reads the files and parses the certificate and the authorities.
func (f Files) parse() ([]tls.Certificate, *x509.CertPool, error) {
	c, err := f.read()
	if err != nil {
		return nil, nil, err
	}
	return f.parsed(c)
}

func (f Files) parsed(c contents) ([]tls.Certificate, *x509.CertPool, error) {
	certs, err := f.pair(c)
	if err != nil {
		return nil, nil, err
	}
	pool, err := f.pool(c)
	if err != nil {
		return nil, nil, err
	}
	return certs, pool, nil
}

// Client is the configuration of a side that dials: it verifies servers
// against CA (the system's roots without one) and presents Cert when one
// is given.
func (f Files) Client() (*tls.Config, error) {
	certs, pool, err := f.parse()
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12}, nil
}

// server is the configuration of a node that serves TLS with certs; with
// clientAuth it requires every client (and peer) to present a
// certificate pool's authorities signed. (Node serves with it.)
func server(certs []tls.Certificate, pool *x509.CertPool, clientAuth bool) (*tls.Config, error) {
	if certs == nil {
		return nil, errors.New("tls: serving TLS needs the node's certificate and key (-tls-cert and -tls-key)")
	}
	c := &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS12}
	if clientAuth {
		if pool == nil {
			return nil, errors.New("tls: requiring client certificates needs the authority that signs them (-tls-ca)")
		}
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// checkNode checks a node's own certificate before the node serves with
// it, so that a mistake is told at start (or at a change of its files)
// rather than as peers' handshake failures: that it is valid now and
// chains to the authorities its peers verify it against (roots: CA, else
// the system's), that it names host (the host peers and clients dial; ""
// skips this), and, with clientAuth, that it may authenticate a client
// (the node presents it to its peers).
func (f Files) checkNode(cert tls.Certificate, roots *x509.CertPool, host string, clientAuth bool) error {
	chain := cert.Certificate
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return fmt.Errorf("tls: %s: %w", f.Cert, err)
	}
	inter := x509.NewCertPool()
	for _, der := range chain[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if _, err := leaf.Verify(opts); err != nil {
		return fmt.Errorf("tls: the node's certificate %s does not verify as its peers will check it (against -tls-ca, for host %q): %w", f.Cert, host, err)
	}
	if clientAuth {
		opts.DNSName, opts.KeyUsages = "", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if _, err := leaf.Verify(opts); err != nil {
			return fmt.Errorf("tls: with -tls-client-auth the node presents its certificate %s to its peers, which refuse it: %w (it needs the clientAuth extended key usage)", f.Cert, err)
		}
	}
	return nil
}
