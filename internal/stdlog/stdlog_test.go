package stdlog

import (
	"bytes"
	"log"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The logger writes through the log package: log.SetOutput redirects it,
// and log's prefix stands in for the record's time.
func TestDebugWritesThroughLog(t *testing.T) {
	var buf bytes.Buffer
	out, flags, prefix := log.Writer(), log.Flags(), log.Prefix()
	t.Cleanup(func() { log.SetOutput(out); log.SetFlags(flags); log.SetPrefix(prefix) })
	log.SetOutput(&buf)
	log.SetFlags(0)
	log.SetPrefix("app: ")

	Debug().Debug("send", "topic", "t1")
	require.Equal(t, "app: level=DEBUG msg=send topic=t1\n", buf.String())
	require.False(t, strings.Contains(buf.String(), "time="))
}
