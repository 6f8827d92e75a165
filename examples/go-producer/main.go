// A producer in Go for interest-stream: it sends a short shopping session (clicks, a cart, an order) for
// one user, each event as JSON on the topic of its type, keyed by user_id. franz-go's default partitioner
// hashes keys with murmur2, as Kafka's Java client does, so the worker finds each user on the partition
// it expects (INTEREST_STRICT_PARTITIONING). The items travel inside the events ("item"), so this works
// against an empty catalogue too. The JSON contract is schemas/event.schema.json.
//
//	go run . -brokers 127.0.0.1:9092 -user go-user-1
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

type item struct {
	Title      string   `json:"title"`
	Text       string   `json:"text,omitempty"`
	Categories []string `json:"categories,omitempty"`
}

type event struct {
	EventID string            `json:"event_id"`
	UserID  string            `json:"user_id"`
	ItemID  string            `json:"item_id"`
	TS      float64           `json:"ts"`
	Item    *item             `json:"item,omitempty"`
	Context map[string]string `json:"context,omitempty"`
}

func main() {
	brokers := flag.String("brokers", envOr("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), "bootstrap servers, comma separated")
	user := flag.String("user", "go-user-1", "user_id of the session")
	prefix := flag.String("topic-prefix", "", "prefix of the click/cart/order topic names (as INTEREST_*_TOPIC)")
	start := flag.Float64("ts", 1.7e9, "event time of the first event, epoch seconds")
	flag.Parse()

	client, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(*brokers, ",")...), kgo.RequiredAcks(kgo.AllISRAcks()))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	session := []struct {
		kind   string
		itemID string
		item   item
	}{
		{"click", "1", item{Title: "Toy Story (1995)", Categories: []string{"Adventure", "Animation", "Children", "Comedy", "Fantasy"}}},
		{"click", "2355", item{Title: "Bug's Life, A (1998)", Categories: []string{"Adventure", "Animation", "Children", "Comedy"}}},
		{"click", "3114", item{Title: "Toy Story 2 (1999)", Categories: []string{"Adventure", "Animation", "Children", "Comedy", "Fantasy"}}},
		{"cart", "2355", item{Title: "Bug's Life, A (1998)", Categories: []string{"Adventure", "Animation", "Children", "Comedy"}}},
		{"order", "3114", item{Title: "Toy Story 2 (1999)", Categories: []string{"Adventure", "Animation", "Children", "Comedy", "Fantasy"}}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for k, step := range session {
		it := step.item
		ev := event{
			EventID: fmt.Sprintf("%s-%d", *user, k), UserID: *user, ItemID: step.itemID,
			TS: *start + float64(60*k), Item: &it, Context: map[string]string{"device": "mobile", "client": "go"},
		}
		value, err := json.Marshal(ev)
		if err != nil {
			log.Fatal(err)
		}
		record := &kgo.Record{Topic: *prefix + step.kind, Key: []byte(*user), Value: value}
		if err := client.ProduceSync(ctx, record).FirstErr(); err != nil {
			log.Fatalf("producing %s: %v", ev.EventID, err)
		}
		fmt.Printf("sent %s %s %s to %s[%d]@%d\n", ev.EventID, step.kind, step.itemID, record.Topic, record.Partition, record.Offset)
	}
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
