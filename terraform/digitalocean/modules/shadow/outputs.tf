output "edge_public_ip" {
  description = "The edge's reserved IP: point the apps' DNS names at it."
  value       = digitalocean_reserved_ip.edge.ip_address
}

output "edge_address" {
  description = "Where apps are served: http://<edge>/ with the app's domain as Host."
  value       = var.domain != "" ? var.domain : digitalocean_reserved_ip.edge.ip_address
}

output "master_url" {
  description = "The master API (every master, comma-separated, with master_count > 1), reachable from the VPC only (the edge and the nodes): use SSH to call it."
  value       = local.master_url
}

output "api_token" {
  description = "The API token (SHADOW_API_TOKEN of all three programs)."
  value       = random_password.api_token.result
  sensitive   = true
}

output "bucket_name" {
  description = "The Spaces bucket of `s3` volume snapshots."
  value       = digitalocean_spaces_bucket.volumes.name
}

output "spaces_endpoint" {
  description = "The bucket's S3 endpoint (SHADOW_S3_ENDPOINT)."
  value       = local.spaces_endpoint
}

output "node_private_ips" {
  description = "VPC addresses of the nodes Terraform created."
  value       = digitalocean_droplet.node[*].ipv4_address_private
}

output "node_tag" {
  description = "Droplet tag of this cluster's nodes (firewall rules follow it)."
  value       = digitalocean_tag.node.name
}

output "vpc_id" {
  description = "The VPC of the droplets."
  value       = digitalocean_vpc.shadow.id
}

output "project_id" {
  description = "The DigitalOcean project."
  value       = digitalocean_project.shadow.id
}

output "master_private_ips" {
  description = "The masters' private IPs."
  value       = digitalocean_droplet.master[*].ipv4_address_private
}
