// Publish an amqtask task from Go with github.com/rabbitmq/amqp091-go and print its result.
// go mod init example && go mod tidy && go run .   (AMQP_URL, QUEUE, TASK override the defaults)
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
)

func env(k, d string) string { if v := os.Getenv(k); v != "" { return v }; return d }

func main() {
	conn, err := amqp.Dial(env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
	if err != nil { log.Fatal(err) }
	defer conn.Close()
	ch, _ := conn.Channel()
	reply, _ := ch.QueueDeclare("", false, true, true, false, nil) // exclusive reply queue
	replies, _ := ch.Consume(reply.Name, "", true, true, false, false, nil)
	id := uuid.NewString()
	body := `[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`
	err = ch.PublishWithContext(context.Background(), "", env("QUEUE", "web_tasks"), true, false, amqp.Publishing{
		ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: amqp.Persistent,
		CorrelationId: id, ReplyTo: reply.Name, Body: []byte(body),
		Headers: amqp.Table{"task": env("TASK", "projq.tasks.add"), "id": id, "lang": "go"},
	})
	if err != nil { log.Fatal(err) }
	select {
	case msg := <-replies: fmt.Println(string(msg.Body)) // {"task_id": ..., "status": "SUCCESS", "result": 5, ...}
	case <-time.After(30 * time.Second): log.Fatal("no result within 30s")
	}
}
