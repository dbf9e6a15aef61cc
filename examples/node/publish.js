// Publish a task to an amqtask (or Celery) worker with amqplib and print its result.
// usage: node publish.js [queue] [task] [args-json]   e.g. node publish.js web_tasks projq.tasks.add '[2,3]'
const amqp = require("amqplib");
const { randomUUID } = require("crypto");

const url = process.env.AMQP_URL || "amqp://guest:guest@127.0.0.1:5672";
const [queue = "web_tasks", task = "projq.tasks.add", args = "[2,3]"] = process.argv.slice(2);

(async () => {
  const conn = await amqp.connect(url);
  const ch = await conn.createConfirmChannel();
  const { queue: replyTo } = await ch.assertQueue("", { exclusive: true }); // our own reply queue
  const id = randomUUID();
  const body = JSON.stringify([JSON.parse(args), {}, { callbacks: null, errbacks: null, chain: null, chord: null }]);
  const timer = setTimeout(() => { console.error("no result within 30s"); process.exit(1); }, 30000);
  let resolveReply;
  const replied = new Promise((resolve) => { resolveReply = resolve; });
  await ch.consume(replyTo, (msg) => {
    if (msg.properties.correlationId === id) resolveReply(JSON.parse(msg.content.toString()));
  }, { noAck: true });
  // Through the default exchange straight to the queue; mandatory: an unroutable task is returned, not lost.
  ch.on("return", () => { console.error(`unroutable: no queue ${queue}`); process.exit(1); });
  ch.publish("", queue, Buffer.from(body), {
    mandatory: true, persistent: true, contentType: "application/json", contentEncoding: "utf-8",
    correlationId: id, replyTo, headers: { task, id, lang: "js", retries: 0 },
  });
  // The confirm first, then the result: a fast worker's reply may arrive before the
  // confirm, and closing the connection then would cut the confirm off.
  await ch.waitForConfirms();
  const reply = await replied;
  clearTimeout(timer);
  console.log(JSON.stringify({ id, status: reply.status, result: reply.result }));
  await conn.close();
  process.exitCode = reply.status === "SUCCESS" ? 0 : 1;
})().catch((err) => { console.error(err.message); process.exit(1); });
