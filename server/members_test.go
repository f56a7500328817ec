package server_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestAddNodeChecksNameAndAddress: AddNode refuses a name outside the
// topic name rules and an address that is not host:port as invalid
// members (an address was reported as "invalid name"), and an address
// another member has (it was accepted: peers then asked the old member
// for the new one's streams, and cluster status showed the new one up).
func TestAddNodeChecksNameAndAddress(t *testing.T) {
	n := servertest.StartNode(t)
	admin := dial(t, n).admin
	for _, tc := range []struct {
		name, addr string
		code       codes.Code
		text       string
	}{
		{"bad name", "127.0.0.1:4001", codes.InvalidArgument, "invalid member: node name"},
		{"", "127.0.0.1:4001", codes.InvalidArgument, "invalid member: node name"},
		{"n2", "badaddr", codes.InvalidArgument, `invalid member: node address "badaddr"`},
		{"n2", ":4001", codes.InvalidArgument, "invalid member: node address"},
		{"n2", n.Addr(), codes.AlreadyExists, "is the address of node \"" + n.Cfg.NodeName + "\""},
	} {
		_, err := admin.AddNode(ctxT(t), &forestbusv1.AddNodeRequest{Name: tc.name, Address: tc.addr})
		require.Error(t, err, "%q at %q", tc.name, tc.addr)
		assert.Equal(t, tc.code, status.Code(err), "%q at %q: %v", tc.name, tc.addr, err)
		assert.Contains(t, status.Convert(err).Message(), tc.text)
	}
	d, err := dial(t, n).bus.GetClusterDetails(ctxT(t), &forestbusv1.GetClusterDetailsRequest{})
	require.NoError(t, err)
	assert.Len(t, d.GetNodes(), 1, "no member was added")
}
