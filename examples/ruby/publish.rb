# Publish an amqtask task from Ruby with the bunny gem and print its result.
# gem install bunny; ruby publish.rb [queue] [task]
require "bunny"
require "json"
require "securerandom"
require "timeout"

queue_name = ARGV[0] || "web_tasks"
task = ARGV[1] || "projq.tasks.add"
conn = Bunny.new(ENV.fetch("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672"))
conn.start
ch = conn.create_channel
reply = ch.queue("", exclusive: true)          # our own reply queue
id = SecureRandom.uuid
done = Queue.new
reply.subscribe do |_info, props, body|
  done << body if props.correlation_id == id
end
body = JSON.generate([[2, 3], {}, { callbacks: nil, errbacks: nil, chain: nil, chord: nil }])
ch.default_exchange.publish(body,
  routing_key: queue_name, persistent: true, mandatory: true,
  content_type: "application/json", content_encoding: "utf-8",
  correlation_id: id, reply_to: reply.name,
  headers: { "task" => task, "id" => id, "lang" => "rb" })
result = Timeout.timeout(30) { done.pop }
puts result                                     # {"task_id": ..., "status": "SUCCESS", "result": 5, ...}
conn.close
