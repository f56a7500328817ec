// Package stdlog is the default debug logger of the client and batcher
// packages: slog records written through the standard log package, as the
// original client wrote its debug output (log.Printf), so that
// log.SetOutput, log.SetFlags and log.SetPrefix apply to them.
package stdlog

import (
	"log"
	"log/slog"
)

// Debug returns a text logger at debug level that writes each record with
// log.Print. The record's own time is left out: log adds its timestamp.
func Debug() *slog.Logger {
	return slog.New(slog.NewTextHandler(writer{}, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	}))
}

// writer hands each formatted record to the log package.
type writer struct{}

func (writer) Write(p []byte) (int, error) {
	log.Print(string(p)) // its newline is kept: log adds none
	return len(p), nil
}
