#!/bin/sh
# Publish a task with amqp-tools (Debian: apt-get install amqp-tools) and print its result.
# usage: publish.sh [queue] [task] [args-json]    e.g. publish.sh web_tasks projq.tasks.add '[2,3]'
set -eu
URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672}
QUEUE=${1:-web_tasks}
TASK=${2:-projq.tasks.add}
ARGS=${3:-[2,3]}
ID=$(cat /proc/sys/kernel/random/uuid)
REPLY="shell-reply-$ID"

amqp-declare-queue -u "$URL" -q "$REPLY" >/dev/null          # results land here
trap 'amqp-delete-queue -u "$URL" -q "$REPLY" >/dev/null' EXIT

# The whole protocol: two headers and a JSON body, through the default exchange to the queue.
amqp-publish -u "$URL" -e "" -r "$QUEUE" -p -t "$REPLY" \
  -C application/json -E utf-8 \
  -H "task: $TASK" -H "id: $ID" \
  -b "[$ARGS, {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}]"

echo "sent $TASK$ARGS as $ID to $QUEUE" >&2
# The worker answers on the reply queue: {"task_id", "status", "result", ...}
timeout 30 amqp-consume -u "$URL" -q "$REPLY" -c 1 -A cat
echo
