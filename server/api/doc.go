// Package api implements the public gRPC services (forestbus.v1
// ForestBusService and AdminService) on top of the topic registry, and the
// interceptor chain every call goes through: logging, the error table,
// panic recovery and the cluster-ID check.
//
// Handlers return plain Go errors (the packages' sentinels, wrapped with
// detail); one table in errors.go turns them into gRPC status codes with a
// google.rpc.ErrorInfo{Domain: "forestbus", Reason: ...} detail.
package api
