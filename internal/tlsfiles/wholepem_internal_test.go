package tlsfiles

import (
	"encoding/pem"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestWholePEM: only a file ending in a cut-off block is refused; what
// x509.CertPool accepts otherwise (text, other blocks, certificates it
// skips) is accepted.
func TestWholePEM(t *testing.T) {
	block := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER, skipped by a pool")})
	other := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte{1, 2, 3}})
	join := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	for name, tc := range map[string]struct {
		b    []byte
		want bool // accepted
	}{
		"blocks":                    {join(block, block), true},
		"text between and after":    {join([]byte("Root A\n======\n"), block, []byte("Root B\n"), block, []byte("# end\n")), true},
		"another block type":        {join(block, other), true},
		"a comment naming a header": {join(block, []byte("#   -----BEGIN CERTIFICATE-----\n")), true},
		"cut off at the end":        {join(block, block[:len(block)-20]), false},
		"only a header":             {join(block, []byte("-----BEGIN CERTIFICATE-----\n")), false},
		// Cut inside the next block's first line (review: the bundle was
		// taken without its last authority).
		"cut after one dash":        {join(block, block[:1]), false},
		"cut after five dashes":     {join(block, block[:5]), false},
		"cut inside BEGIN":          {join(block, block[:10]), false},
		"cut at the block's end":    {join(block, []byte("\n")), true},
		"a last line of other text": {join(block, []byte("Root B")), true},
	} {
		err := wholePEM(tc.b, "f.pem")
		if tc.want {
			assert.NoError(t, err, name)
		} else {
			assert.ErrorContains(t, err, "cut-off", name)
		}
	}
}
