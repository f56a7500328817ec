package integration_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/internal/tlstest"
)

// TestClusterTLS: fbnode processes started with -tls-cert, -tls-key,
// -tls-ca and -tls-client-auth form a cluster over TLS; a client with a
// certificate the authority signed sends through a leader's kill -9 and
// restart; a fourth node joins (-join, over TLS); every node then holds
// the same messages; a plaintext client gets nothing.
func TestClusterTLS(t *testing.T) {
	ca := tlstest.NewCA(t)
	caFile, certFile, keyFile := ca.Write(t, t.TempDir(), "node", ca.Issue(t, "node"))
	tlsArgs := []string{"-tls-ca", caFile, "-tls-cert", certFile, "-tls-key", keyFile, "-tls-client-auth"}
	opts := []client.Option{client.WithTLS(ca.ClientConfig(ca.Issue(t, "client")))}
	c := startClusterWith(t, 3, opts, tlsArgs...)
	cl := client.New("it", c.addrs(), append(opts, client.WithRetryWindow(30*time.Second))...)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	sent := 0
	send := func(n int) int64 {
		var last int64
		for range n {
			ids, err := cl.SendMessagesContext(ctx, "default", [][]byte{fmt.Appendf(nil, "m%d", sent)}, true)
			require.NoError(t, err, "message %d", sent)
			sent++
			last = ids[0]
		}
		return last
	}
	send(50)
	leader := c.leader("default", c.procs)
	leader.kill()
	send(50)
	leader.restart()

	n4 := newProc(t, "n4", append([]string{"-join", c.procs[0].addr}, tlsArgs...)...)
	n4.start(freeAddrs(t, 1)[0])
	all := append(slices.Clone(c.procs), n4)
	c.waitMembers(all, "n1", "n2", "n3", "n4")
	last := send(50)
	require.EqualValues(t, 150, last)
	c.catchUp(c.procs[0], "default", last, 60*time.Second) // a follower's commit point trails
	want := c.readAll(c.procs[0], "default", last)
	for _, p := range all {
		c.catchUp(p, "default", last, 60*time.Second)
		assert.Equal(t, want, c.readAll(p, "default", last), "%s's copy", p.name)
	}

	plain := client.New("it", c.addrs(), client.WithRetryWindow(0))
	defer plain.Close()
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	defer pcancel()
	_, err := plain.SendMessagesContext(pctx, "default", [][]byte{[]byte("plain")}, true)
	assert.Error(t, err, "a plaintext client")
}
