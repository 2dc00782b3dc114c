// Package deploy checks the deployment files without building or starting
// anything: docker-compose.yml against the compose spec, the services'
// Dockerfiles against the repository, and deploy/config/*.yaml.
package deploy
