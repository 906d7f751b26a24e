# The push path: the bucket tells a queue when the agent writes a run's `_error` (also the
# interrupted marker, an `_error` with cause interrupted) or `_complete`; the watcher Lambda takes
# the queue as an event source and sweeps just those runs, seconds after the write. The minute
# schedule (watcher.tf) stays the backstop for silence and hangs, which no write announces.

locals {
  push_events  = var.enable_watcher && var.enable_push_events
  events_queue = "${var.name}-run-events"
  # A Lambda event source needs the queue's visibility timeout at least the function's timeout.
  events_visibility_s = 6 * 50
}

resource "aws_sqs_queue" "events_dlq" {
  count                     = local.push_events ? 1 : 0
  name                      = "${local.events_queue}-dlq"
  message_retention_seconds = 1209600 # 14 days to look at what the watcher could not sweep
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "events" {
  count                      = local.push_events ? 1 : 0
  name                       = local.events_queue
  visibility_timeout_seconds = local.events_visibility_s
  message_retention_seconds  = 86400 # a day: the schedule sweeps anything older anyway
  sqs_managed_sse_enabled    = true
  lifecycle {
    ignore_changes = [redrive_policy] # owned by aws_sqs_queue_redrive_policy.events below
  }
}

# What the watcher could not sweep five times goes aside (a run it cannot read, a bad message).
resource "aws_sqs_queue_redrive_policy" "events" {
  count     = local.push_events ? 1 : 0
  queue_url = aws_sqs_queue.events[0].id
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.events_dlq[0].arn
    maxReceiveCount     = 5
  })
}

data "aws_iam_policy_document" "events_queue" {
  count = local.push_events ? 1 : 0
  statement {
    sid       = "BucketNotifies"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.events[0].arn]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [local.bucket_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_sqs_queue_policy" "events" {
  count     = local.push_events ? 1 : 0
  queue_url = aws_sqs_queue.events[0].id
  policy    = data.aws_iam_policy_document.events_queue[0].json
  # One SetQueueAttributes at a time on this queue: moto clears Policy on a call that does not name
  # it, so a redrive policy set just after the policy wiped it and the provider waited forever for
  # the policy to propagate (the test apply's stall). AWS itself does not care about the order.
  depends_on = [aws_sqs_queue_redrive_policy.events]
}

# The bucket's whole notification configuration: set enable_push_events = false for a bucket
# whose notifications something else manages.
resource "aws_s3_bucket_notification" "store" {
  count  = local.push_events ? 1 : 0
  bucket = local.bucket_id
  dynamic "queue" {
    for_each = ["_error", "_complete"]
    content {
      id            = "trainctl-${trimprefix(queue.value, "_")}"
      queue_arn     = aws_sqs_queue.events[0].arn
      events        = ["s3:ObjectCreated:*"]
      filter_prefix = "${local.runs_prefix}/"
      filter_suffix = "/${queue.value}"
    }
  }
  depends_on = [aws_sqs_queue_policy.events]
}

data "aws_iam_policy_document" "watcher_events" {
  count = local.push_events ? 1 : 0
  statement {
    sid       = "ConsumeRunEvents"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.events[0].arn]
  }
}

resource "aws_iam_role_policy" "watcher_events" {
  count  = local.push_events ? 1 : 0
  name   = "watcher-events"
  role   = aws_iam_role.watcher[0].id
  policy = data.aws_iam_policy_document.watcher_events[0].json
}

resource "aws_lambda_event_source_mapping" "watcher_events" {
  count                              = local.push_events ? 1 : 0
  event_source_arn                   = aws_sqs_queue.events[0].arn
  function_name                      = aws_lambda_function.watcher[0].arn
  batch_size                         = 10
  maximum_batching_window_in_seconds = 0 # seconds count: invoke as soon as a marker arrives
  function_response_types            = ["ReportBatchItemFailures"]
  # After the notification: S3's test event at setup lands in the queue before anything consumes it.
  depends_on = [aws_iam_role_policy.watcher_events, aws_s3_bucket_notification.store]
}
