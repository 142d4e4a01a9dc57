output "edge_public_ip" {
  description = "The edge's public (Elastic) IP: point the apps' DNS names at it."
  value       = aws_eip.edge.public_ip
}

output "edge_address" {
  description = "Where apps are served: http://<edge>/ with the app's domain as Host."
  value       = var.domain != "" ? var.domain : aws_eip.edge.public_ip
}

output "master_url" {
  description = "The master API (the masters' internal load balancer with master_count > 1), reachable from inside the VPC only (the edge and the nodes): use SSH or a bastion to call it."
  value       = local.master_url
}

output "master_private_ips" {
  description = "The masters' private IPs."
  value       = aws_instance.master[*].private_ip
}

output "database_endpoint" {
  description = "The RDS database (host:port), with create_database; null otherwise."
  value       = var.create_database ? aws_db_instance.state[0].endpoint : null
}

output "api_token_parameter_name" {
  description = "SSM parameter (SecureString) holding the API token: aws ssm get-parameter --with-decryption --name <this>."
  value       = aws_ssm_parameter.api_token.name
}

output "bucket_name" {
  description = "The S3 bucket of `s3` volume snapshots (and master-backups/)."
  value       = aws_s3_bucket.volumes.bucket
}

output "kms_key_arn" {
  description = "The KMS key encrypting the bucket and the token."
  value       = aws_kms_key.shadow.arn
}

output "node_launch_template_id" {
  description = "Launch template of the nodes (the edge launches replacements from it)."
  value       = aws_launch_template.node.id
}

output "node_private_ips" {
  description = "Private IPs of the nodes Terraform started."
  value       = aws_instance.node[*].private_ip
}

output "node_instance_tag" {
  description = "Tag key and value of this cluster's node instances."
  value       = { key = local.node_tag, value = var.name }
}

output "volume_tag" {
  description = "Tag key and value the `ebs` backend must put on the volumes and snapshots it creates; the node role manages only those."
  value       = { key = local.volume_tag, value = var.name }
}

output "security_group_ids" {
  description = "Security groups of the edge, the master and the nodes."
  value       = local.security_groups
}
