package server

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// BuildInfo names the running build: what operators compare across the
// nodes of a cluster during a rolling upgrade.
type BuildInfo struct {
	// Version is the module version the binary was built at: a
	// pseudo-version for a build from a git checkout, "(devel)" when the
	// build recorded none.
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from ("" when the
	// build did not record it, as in tests); Modified, whether the work
	// tree had changes.
	Revision string `json:"revision,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	// GoVersion is the Go toolchain that built it.
	GoVersion string `json:"go_version"`
}

// Build reports the running binary's build, from the information the Go
// toolchain embeds.
func Build() BuildInfo {
	b := BuildInfo{Version: "(unknown)", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	if v := bi.Main.Version; v != "" {
		b.Version = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// String is the build in one line: version, revision (12 digits, "+" when
// modified) and Go version.
func (b BuildInfo) String() string {
	var s strings.Builder
	s.WriteString(b.Version)
	if b.Revision != "" {
		s.WriteString(" ")
		s.WriteString(b.Revision[:min(12, len(b.Revision))])
		if b.Modified {
			s.WriteString("+")
		}
	}
	s.WriteString(" ")
	s.WriteString(b.GoVersion)
	return s.String()
}
