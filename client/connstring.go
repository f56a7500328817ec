package client

import (
	"regexp"
	"strings"
)

// connStringRE is the original client's connection string pattern.
var connStringRE = regexp.MustCompile(`^([^#@]*)?#?([^@]+)?@(.*)`)

// ParseConnectionString splits a connection string into its parts.
//
// The format is clusterID#topic@nodelist: clusterID is the optional ID of
// the cluster, #topic the optional name of the topic, and @nodelist a list
// of one or more nodes, comma separated. The @ is required; a string
// without it gives ("", "", nil).
//
// Examples: "@:1010" gives nodes [":1010"]; "#t1@host:1010,:2020" gives
// topic "t1"; "t1@host:1010,:2020" gives cluster ID "t1" and no topic;
// "t1#t2@host:1010,otherhost:2020" gives both.
func ParseConnectionString(constr string) (clusterID string, topic string, nodes []string) {
	m := connStringRE.FindStringSubmatch(constr)
	if m == nil {
		return "", "", nil
	}
	return m[1], m[2], strings.Split(m[3], ",")
}
