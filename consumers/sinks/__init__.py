"""Where processed records go: the S3 archive (checkpointed) and CloudWatch metrics (not).

`base` holds the protocol the checkpoint drives and the sinks' errors; `s3_archive` and
`cloudwatch` take their aiobotocore clients from the caller.
"""
