package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseFlagsDefaults(t *testing.T) {
	c, _, err := parseFlags([]string{"-forestbus", "bench#t1@127.0.0.1:1,127.0.0.1:2"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "bench", c.ClusterID)
	assert.Equal(t, "t1", c.Topic)
	assert.Equal(t, []string{"127.0.0.1:1", "127.0.0.1:2"}, c.Nodes)
	assert.Equal(t, allWorkloads, c.Workloads)
	assert.Equal(t, 50, c.Producers)
	assert.Equal(t, 100, c.Batch)
	assert.Equal(t, 100, c.Size)
	assert.Equal(t, 15*time.Second, c.Duration)
	assert.Equal(t, 2000, c.Sends)
	assert.Equal(t, 20, c.Warmup)
	assert.Equal(t, 1_000_000, c.ReadMessages)
	assert.Equal(t, 500, c.Quantity)
	assert.Equal(t, 100, c.Topics)
	assert.Equal(t, 10, c.W4Batch)
	assert.True(t, c.WaitForCommit)
	assert.False(t, c.SharedClient)
	assert.Equal(t, 1, c.Runs)
	assert.Equal(t, 40_000, c.perProducer(50))
}

func TestParseFlagsDefaultTopic(t *testing.T) {
	c, _, err := parseFlags([]string{"-forestbus", "bench@127.0.0.1:1"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "default", c.Topic)
	assert.Equal(t, "bench", c.ClusterID)
}

func TestParseWorkloads(t *testing.T) {
	ws, err := parseWorkloads("w3, W1,W3")
	require.NoError(t, err)
	assert.Equal(t, []string{"W3", "W1"}, ws)
	ws, err = parseWorkloads("W2,all")
	require.NoError(t, err)
	assert.Equal(t, []string{"W2", "W1", "W3", "W3S", "W3SC", "W4"}, ws)
	_, err = parseWorkloads("W5")
	assert.ErrorContains(t, err, "W5")
	_, err = parseWorkloads(" , ")
	assert.Error(t, err)
}

func TestParseFlagsInvalid(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-forestbus", "no-at-sign"}, "-forestbus"},
		{[]string{"-forestbus", "c#t@"}, "empty node"},
		{[]string{"-producers", "0"}, "-producers"},
		{[]string{"-batch", "-1"}, "-batch"},
		{[]string{"-size", "0"}, "-size"},
		{[]string{"-size", "2000000"}, "max message size"},
		{[]string{"-batch", "1000", "-size", "100000"}, "max batch size"},
		{[]string{"-w4-batch", "1000", "-size", "100000", "-batch", "1"}, "-w4-batch"},
		{[]string{"-duration", "0s"}, "-duration"},
		{[]string{"-timeout", "-1s"}, "-timeout"},
		{[]string{"-runs", "0"}, "-runs"},
		{[]string{"-runs", "3", "-run-number", "2"}, "-run-number"},
		{[]string{"-run-number", "-1"}, "-run-number"},
		{[]string{"-quantity", "0"}, "-quantity"},
		{[]string{"-topics", "0"}, "-topics"},
		{[]string{"-warmup", "-1"}, "-warmup"},
		{[]string{"-read-from", "0"}, "-read-from"},
		{[]string{"-max-batches", "60000000"}, "-max-batches"},
		{[]string{"-workload", "W9"}, "W9"},
		{[]string{"extra"}, "unexpected"},
		{[]string{"-report"}, "-report"},
		{[]string{"-no-such-flag"}, "no-such-flag"},
		{[]string{"-tls-ca", "/no/such/ca.pem"}, "no such file"},
		{[]string{"-tls-cert", "/no/such/c.pem"}, "-tls-key"},
	} {
		_, _, err := parseFlags(tc.args, io.Discard)
		if assert.Error(t, err, strings.Join(tc.args, " ")) {
			assert.Contains(t, err.Error(), tc.want, strings.Join(tc.args, " "))
		}
	}
}

func TestFillBatchCapped(t *testing.T) {
	c := &config{FillBatch: 1000, Size: 100}
	assert.Equal(t, 1000, c.fillBatch())
	c.Size = 1 << 20
	assert.Equal(t, 8, c.fillBatch())
}
