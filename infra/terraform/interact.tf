# Triage from Slack: the alerts' "Snooze 4h" / "Stop run" buttons post to this function's URL.
# Slack cannot sign requests the AWS way, so the URL takes no IAM auth; every request is checked
# against the app's signing secret (slack_sdk's SignatureVerifier, 5-minute window, replays
# refused) before anything is written, and it may write only the ledgers and control/stop.

locals {
  interact           = var.enable_watcher && var.enable_slack_buttons
  interact_name      = "${var.name}-slack-actions"
  signing_param_name = startswith(var.slack_signing_secret_parameter, "/") ? var.slack_signing_secret_parameter : "/${var.slack_signing_secret_parameter}"
  signing_param_arn  = "arn:${local.partition}:ssm:${var.region}:${local.account_id}:parameter${local.signing_param_name}"
  interact_log_arn   = "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/lambda/${local.interact_name}"
}

# Like the webhook: a placeholder Terraform never reads back; put the real secret with
# `aws ssm put-parameter --type SecureString --overwrite`. Until then every click is refused.
resource "aws_ssm_parameter" "slack_signing_secret" {
  #checkov:skip=CKV_AWS_337:SecureString under the AWS-managed aws/ssm key; a customer key is optional hardening outside this module.
  count       = local.interact ? 1 : 0
  name        = local.signing_param_name
  description = "Slack app signing secret for trainctl's alert buttons"
  type        = "SecureString"
  value       = "unset"
  lifecycle {
    ignore_changes = [value]
  }
}

data "aws_iam_policy_document" "interact" {
  statement {
    sid       = "FindRuns"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.runs_prefix}/*"]
    }
  }
  statement {
    sid       = "ReadRuns"
    actions   = ["s3:GetObject"]
    resources = ["${local.bucket_arn}/${local.runs_prefix}/*"]
  }
  statement {
    sid       = "AckOrStop"
    actions   = ["s3:PutObject"]
    resources = ["${local.bucket_arn}/${local.runs_prefix}/*/_alerts.json", "${local.bucket_arn}/${local.runs_prefix}/*/control/stop"]
  }
  statement {
    sid       = "ReadSigningSecret"
    actions   = ["ssm:GetParameter"]
    resources = [local.signing_param_arn]
  }
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${local.interact_log_arn}:*"]
  }
}

resource "aws_iam_role" "interact" {
  count              = local.interact ? 1 : 0
  name_prefix        = "${var.name}-slack-"
  assume_role_policy = data.aws_iam_policy_document.watcher_assume.json
}

resource "aws_iam_role_policy" "interact" {
  count  = local.interact ? 1 : 0
  name   = "slack-actions"
  role   = aws_iam_role.interact[0].id
  policy = data.aws_iam_policy_document.interact.json
}

resource "aws_cloudwatch_log_group" "interact" {
  #checkov:skip=CKV_AWS_158:Logs hold status codes and who clicked what, no secrets; CloudWatch's default encryption applies.
  #checkov:skip=CKV_AWS_338:A month of click logs is enough; set watcher_log_retention_days for more.
  count             = local.interact ? 1 : 0
  name              = "/aws/lambda/${local.interact_name}"
  retention_in_days = var.watcher_log_retention_days
}

resource "aws_lambda_function" "interact" {
  #checkov:skip=CKV_AWS_116:Invoked synchronously by its URL: Slack sees the answer, there is nothing to dead-letter.
  #checkov:skip=CKV_AWS_117:It must reach Slack's response_url and S3; inside a VPC that needs a NAT gateway this module does not impose.
  #checkov:skip=CKV_AWS_173:Environment holds only the store URL and the parameter name; the secret stays in SSM.
  #checkov:skip=CKV_AWS_272:The zip is built locally by `ctl lambda-zip`; code signing needs a signing profile this module does not own.
  #checkov:skip=CKV_AWS_50:X-Ray tracing adds cost and a wildcard-resource permission for a click handler.
  #checkov:skip=CKV_AWS_115:Reserving concurrency fails on accounts at the 10-execution minimum; acks and stops are idempotent writes.
  count            = local.interact ? 1 : 0
  function_name    = local.interact_name
  description      = "trainctl: Snooze 4h / Stop run buttons on Slack alerts"
  role             = aws_iam_role.interact[0].arn
  handler          = "ops.interact.lambda_handler"
  runtime          = var.watcher_runtime
  filename         = var.watcher_zip_path
  source_code_hash = filebase64sha256(var.watcher_zip_path)
  timeout          = 10 # Slack waits 3 s for the answer; the message edit may take a little longer
  memory_size      = 256

  environment {
    variables = {
      TRAINCTL_STORE                     = "s3://${local.bucket_name}/${local.runs_prefix}"
      SLACK_SIGNING_SECRET_SSM_PARAMETER = local.signing_param_name
    }
  }

  depends_on = [aws_iam_role_policy.interact, aws_cloudwatch_log_group.interact]
}

resource "aws_lambda_function_url" "interact" {
  #checkov:skip=CKV_AWS_258:Slack cannot sign with SigV4; every request is verified against the Slack signing secret before anything happens.
  count              = local.interact ? 1 : 0
  function_name      = aws_lambda_function.interact[0].function_name
  authorization_type = "NONE"
}
