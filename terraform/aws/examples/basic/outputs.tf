output "edge_public_ip" {
  description = "Point the apps' DNS names here."
  value       = module.shadow.edge_public_ip
}

output "edge_address" {
  description = "Where apps are served."
  value       = module.shadow.edge_address
}

output "master_url" {
  description = "The master's API (inside the VPC)."
  value       = module.shadow.master_url
}

output "api_token_parameter_name" {
  description = "SSM parameter holding the API token."
  value       = module.shadow.api_token_parameter_name
}

output "bucket_name" {
  description = "The bucket of `s3` volumes."
  value       = module.shadow.bucket_name
}
