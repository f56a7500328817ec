package httpapi_test

import "google.golang.org/grpc"

var grpcUnaryInfo = grpc.UnaryServerInfo{FullMethod: "/forestbus.v1.ForestBusService/SendMessages"}
