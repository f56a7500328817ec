package forestbus_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	forestbus "github.com/forestbus/forestbus"
	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server"
)

// exampleNodes is the node list of the in-process node the examples run
// against; TestMain starts it. The seed documentation's examples list
// "localhost:3000,localhost:3001,localhost:3002"; ours name the real node.
var exampleNodes []string

// TestMain starts one in-process node (cluster "test-cluster") for the
// examples, each of which uses a topic of its own so they do not depend on
// their order.
func TestMain(m *testing.M) {
	os.Exit(runWithNode(m))
}

func runWithNode(m *testing.M) int {
	dir, err := os.MkdirTemp("", "forestbus-examples-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := server.Start(ctx, server.Config{
		ListenAddr:   "127.0.0.1:0",
		DataDir:      dir,
		ClusterID:    "test-cluster",
		DefaultTopic: "test-topic",
		TickInterval: 20 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the example node:", err)
		return 1
	}
	defer srv.Stop()
	exampleNodes = []string{srv.Addr()}

	// Topics of their own for the examples; "get-topic" holds three messages.
	c := forestbus.NewClient("test-cluster", exampleNodes)
	defer c.Close()
	for _, name := range []string{"send-topic", "get-topic", "batcher-topic", "async-topic"} {
		if err := c.CreateTopic(ctx, name, client.TopicSettings{}); err != nil {
			fmt.Fprintln(os.Stderr, "creating", name, err)
			return 1
		}
	}
	if _, err := c.SendMessages("get-topic", [][]byte{[]byte("a"), []byte("b"), []byte("c")}, true); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

func ExampleClient_SendMessages() {
	client := forestbus.NewClient("test-cluster", exampleNodes)
	defer client.Close()

	msgs := make([][]byte, 0)
	msgs = append(msgs, []byte("Message 1"))
	msgs = append(msgs, []byte("Message 2"))

	// Send the messages and wait for commit
	ids, err := client.SendMessages("send-topic", msgs, true)
	if err != nil {
		fmt.Printf("Error sending the messages: %v\n", err)
		return
	}
	if len(ids) == 2 {
		fmt.Printf("Message one at index %v, two at index %v\n", ids[0], ids[1])
	}
	// Output: Message one at index 1, two at index 2
}

func ExampleClient_GetMessages() {
	client := forestbus.NewClient("test-cluster", exampleNodes)
	defer client.Close()

	msgs, nextID, err := client.GetMessages("get-topic", 1, 100, true)
	if err != nil {
		fmt.Printf("Error getting messages: %v\n", err)
		return
	}
	if len(msgs) == 0 && nextID == 0 {
		fmt.Printf("Commit index is zero due to a full cluster restart.)\n")
		return
	}
	fmt.Printf("Recieved %v messages with the next index being %v\n", len(msgs), nextID)
	// Output: Recieved 3 messages with the next index being 4
}

func ExampleMessageBatcher_SendMessage() {
	client := forestbus.NewClient("test-cluster", exampleNodes)
	defer client.Close()
	batcher := forestbus.NewMessageBatcher(client, "batcher-topic")
	defer batcher.Close()

	wg := sync.WaitGroup{}
	var mu sync.Mutex
	var indexes []int64

	// Parallel goroutines can use the batcher, resulting in individual
	// messages being batched together.
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Send the message - if the internal buffer is full wait until it can be added.
			index, err := batcher.SendMessage([]byte("Message"), true)
			if err != nil {
				fmt.Printf("Error sending message: %v\n", err)
				return
			}
			mu.Lock()
			indexes = append(indexes, index)
			mu.Unlock()
		}()
	}
	wg.Wait()
	// The goroutines finish in any order; sorted, the indexes are 1..20.
	slices.Sort(indexes)
	fmt.Printf("%d messages, indexes %d to %d\n", len(indexes), indexes[0], indexes[len(indexes)-1])
	// Output: 20 messages, indexes 1 to 20
}

func ExampleMessageBatcher_AsyncSendMessage() {
	client := forestbus.NewClient("test-cluster", exampleNodes)
	defer client.Close()
	batcher := forestbus.NewMessageBatcher(client, "async-topic")
	defer batcher.Close()

	responseChannel := make(chan *forestbus.SendResult, 500)

	go func() {
		for i := 0; i < 1000; i++ {
			// Need to use a local copy if i so we can pass it's address as the reference
			localID := i
			// Send messages, blocking if the buffer is full.
			// There is no need to check the error response in this instance.
			batcher.AsyncSendMessage([]byte("Message"), &localID, responseChannel, true)
		}
	}()

	errorsSeen := 0
	inOrder := true
	for responseCount := 0; responseCount < 1000; responseCount++ {
		result := <-responseChannel
		if result.GetError() != nil {
			fmt.Printf("Message %v encountered error: %v\n", *result.GetReference().(*int), result.GetError())
			errorsSeen++
			continue
		}
		// Results come back in send order: message i got index i+1.
		if result.GetIndex() != int64(*result.GetReference().(*int)+1) {
			inOrder = false
		}
	}
	fmt.Printf("1000 results, %d errors, indexes in send order: %v\n", errorsSeen, inOrder)
	// Output: 1000 results, 0 errors, indexes in send order: true
}
