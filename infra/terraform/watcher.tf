# The watcher in the cloud: the ops sweep as a Lambda on an EventBridge schedule.

locals {
  watcher_name    = "${var.name}-watcher"
  ssm_param_name  = startswith(var.slack_webhook_parameter, "/") ? var.slack_webhook_parameter : "/${var.slack_webhook_parameter}"
  ssm_param_arn   = "arn:${local.partition}:ssm:${var.region}:${local.account_id}:parameter${local.ssm_param_name}"
  watcher_log_arn = "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/lambda/${local.watcher_name}"
}

# The webhook is a secret: Terraform creates the parameter with a placeholder and never reads the
# real value back into state; put the URL with `aws ssm put-parameter --overwrite`.
resource "aws_ssm_parameter" "slack_webhook" {
  #checkov:skip=CKV_AWS_337:SecureString under the AWS-managed aws/ssm key; a customer key is optional hardening outside this module.
  count       = var.enable_watcher && var.create_slack_webhook_parameter ? 1 : 0
  name        = local.ssm_param_name
  description = "Slack incoming-webhook URL for trainctl alerts"
  type        = "SecureString"
  value       = "unset"
  lifecycle {
    ignore_changes = [value]
  }
}

data "aws_iam_policy_document" "watcher_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "watcher" {
  statement {
    sid       = "ListRuns"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [local.runs_prefix, "${local.runs_prefix}/*"]
    }
  }
  statement {
    sid       = "ReadRuns"
    actions   = ["s3:GetObject"]
    resources = ["${local.bucket_arn}/${local.runs_prefix}/*"]
  }
  statement {
    sid       = "WriteAlertLedger"
    actions   = ["s3:PutObject"]
    resources = [for k in var.watcher_write_keys : "${local.bucket_arn}/${local.runs_prefix}/${k}"]
  }
  statement {
    sid       = "DescribeInstances"
    actions   = ["ec2:DescribeInstances", "ec2:DescribeInstanceStatus"]
    resources = ["*"] # EC2 Describe* calls support no resource-level scoping
  }
  statement {
    sid       = "ReadSlackWebhook"
    actions   = ["ssm:GetParameter"]
    resources = [local.ssm_param_arn]
  }
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${local.watcher_log_arn}:*"]
  }
}

resource "aws_iam_role" "watcher" {
  count              = var.enable_watcher ? 1 : 0
  name_prefix        = "${var.name}-watcher-"
  assume_role_policy = data.aws_iam_policy_document.watcher_assume.json
}

resource "aws_iam_role_policy" "watcher" {
  count  = var.enable_watcher ? 1 : 0
  name   = "watcher"
  role   = aws_iam_role.watcher[0].id
  policy = data.aws_iam_policy_document.watcher.json
}

resource "aws_cloudwatch_log_group" "watcher" {
  #checkov:skip=CKV_AWS_158:Logs hold run ids and alert states, no secrets; CloudWatch's default encryption applies.
  #checkov:skip=CKV_AWS_338:A month of sweep logs is enough to debug alerting; set watcher_log_retention_days for more.
  count             = var.enable_watcher ? 1 : 0
  name              = "/aws/lambda/${local.watcher_name}"
  retention_in_days = var.watcher_log_retention_days
}

resource "aws_lambda_function" "watcher" {
  #checkov:skip=CKV_AWS_116:Its async invocations are the minute schedule, whose failed sweep the next one redoes; the pushed events have their own dead-letter queue (events.tf).
  #checkov:skip=CKV_AWS_117:It must reach Slack and S3; inside a VPC that needs a NAT gateway this module does not impose.
  #checkov:skip=CKV_AWS_173:Environment holds only the store URL and the parameter name; the webhook stays in SSM.
  #checkov:skip=CKV_AWS_272:The zip is built locally by `ctl lambda-zip`; code signing needs a signing profile this module does not own.
  #checkov:skip=CKV_AWS_50:X-Ray tracing adds cost and a wildcard-resource permission for a one-second sweep.
  #checkov:skip=CKV_AWS_115:Reserving concurrency fails on accounts at the 10-execution minimum; the ledger's compare-and-set already makes overlapping sweeps safe.
  count            = var.enable_watcher ? 1 : 0
  function_name    = local.watcher_name
  description      = "trainctl watcher: sweeps the run store and alerts Slack"
  role             = aws_iam_role.watcher[0].arn
  handler          = "ops.lambda_handler.handler"
  runtime          = var.watcher_runtime
  filename         = var.watcher_zip_path
  source_code_hash = filebase64sha256(var.watcher_zip_path)
  timeout          = 50 # under the one-minute schedule, so sweeps rarely overlap
  memory_size      = 256

  environment {
    variables = {
      TRAINCTL_STORE              = "s3://${local.bucket_name}/${local.runs_prefix}"
      SLACK_WEBHOOK_SSM_PARAMETER = local.ssm_param_name
      SLACK_BUTTONS               = local.interact ? "1" : "0"
    }
  }

  depends_on = [aws_iam_role_policy.watcher, aws_cloudwatch_log_group.watcher]
}

resource "aws_cloudwatch_event_rule" "watcher" {
  count               = var.enable_watcher ? 1 : 0
  name                = "${local.watcher_name}-schedule"
  description         = "Run the trainctl watcher sweep"
  schedule_expression = var.watcher_schedule
}

resource "aws_cloudwatch_event_target" "watcher" {
  count = var.enable_watcher ? 1 : 0
  rule  = aws_cloudwatch_event_rule.watcher[0].name
  arn   = aws_lambda_function.watcher[0].arn
}

resource "aws_lambda_permission" "watcher" {
  count         = var.enable_watcher ? 1 : 0
  statement_id  = "AllowEventBridgeSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.watcher[0].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.watcher[0].arn
}
