// Package server wires a Forest Bus node together: the data directory and
// its identity file, the replica engine, the topic registry, and the gRPC
// server with the public services, health and reflection.
//
// Imports flow commitlog ← replica ← topic ← api ← server.
package server
