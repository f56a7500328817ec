// Package forestbus is the client of Forest Bus over gRPC, under the names
// of the original Go client, github.com/owlfish/forestbus.
//
// A program written against the original package compiles against this one
// by changing the import path only:
//
//	client := forestbus.NewClient("test-cluster", []string{"localhost:3000,localhost:3001"})
//	ids, err := client.SendMessages("test-topic", msgs, true)
//
//	batcher := forestbus.NewMessageBatcher(client, "test-topic")
//	index, err := batcher.SendMessage([]byte("Message"), true)
//
// Every name here is an alias of the client and batcher packages, which
// hold the documentation and the newer API: context-first calls
// (SendMessagesContext, GetMessagesContext, ...), topic administration,
// and options such as client.WithRetryWindow and client.WithLogger. The
// error variables are the same values as the sentinels of those packages,
// so errors.Is and == work across both.
//
// Connection strings ("clusterID#topic@host:port,host:port") are parsed by
// ParseConnectionString as in the original.
package forestbus
