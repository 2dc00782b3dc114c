package deploy

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// clusterEnv is deploy/cluster.env's KEY=VALUE lines.
func clusterEnv(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "deploy", "cluster.env"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var env []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			env = append(env, l)
		}
	}
	return env
}

// loadClusterCompose loads docker-compose.yml as `docker compose
// --env-file deploy/cluster.env` does: with its variables and the profiles
// its COMPOSE_PROFILES names.
func loadClusterCompose(t *testing.T) *types.Project {
	t.Helper()
	root := repoRoot(t)
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithEnv(clusterEnv(t)),
		cli.WithDefaultProfiles(),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml with deploy/cluster.env: %v", err)
	}
	return p
}

var clusterNodes = []string{"nats-1", "nats-2", "nats-3"}

// TestComposeClusterProfile: deploy/cluster.env turns on three NATS nodes,
// each with its own name and store, routed to all three, with a health
// check; the bridge waits for them and provisions R3; the bridge and every
// sink are given every node.
func TestComposeClusterProfile(t *testing.T) {
	p := loadClusterCompose(t)
	for _, name := range clusterNodes {
		s := service(t, p, name)
		cmd := strings.Join(s.Command, " ")
		for _, want := range []string{"-js", "--server_name " + name, "--cluster_name jetsync", "--cluster nats://0.0.0.0:6222",
			"--routes nats://nats-1:6222,nats://nats-2:6222,nats://nats-3:6222"} {
			if !strings.Contains(cmd, want) {
				t.Errorf("%s: command %q lacks %q", name, cmd, want)
			}
		}
		if len(s.Volumes) != 1 || s.Volumes[0].Type != types.VolumeTypeVolume || s.Volumes[0].Source != name+"-data" || s.Volumes[0].Target != "/data" {
			t.Errorf("%s must keep /data in its own named volume %s-data, has %+v", name, name, s.Volumes)
		}
		if hc := s.HealthCheck; hc == nil || len(hc.Test) == 0 {
			t.Errorf("%s has no health check", name)
		}
		if !strings.HasPrefix(s.Image, "nats:2.1") {
			t.Errorf("%s: image %q, want nats >= 2.12", name, s.Image)
		}
	}
	bridge := service(t, p, "bridge")
	for _, n := range clusterNodes {
		if d, ok := bridge.DependsOn[n]; !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("bridge must wait for %s to be healthy, has %+v", n, bridge.DependsOn)
		}
	}
	if r := bridge.Environment["JETSYNC_STREAM_REPLICAS"]; r == nil || *r != "3" {
		t.Errorf("bridge: JETSYNC_STREAM_REPLICAS = %v, want 3", deref(r))
	}
	for name := range jetsyncServices {
		u := service(t, p, name).Environment["JETSYNC_NATS_URL"]
		if u == nil {
			t.Errorf("%s: no JETSYNC_NATS_URL", name)
			continue
		}
		var hosts []string
		for _, one := range strings.Split(*u, ",") {
			checkAddressHost(t, p, name+": JETSYNC_NATS_URL", one)
			hosts = append(hosts, strings.TrimSuffix(strings.TrimPrefix(one, "nats://"), ":4222"))
		}
		if !slices.Equal(hosts, clusterNodes) {
			t.Errorf("%s: JETSYNC_NATS_URL %q must list every node %v", name, *u, clusterNodes)
		}
	}
}

// TestComposeClusterProfileOff: without the profile, no cluster node runs
// and everything uses the single server, as before.
func TestComposeClusterProfileOff(t *testing.T) {
	p := loadCompose(t)
	for _, n := range clusterNodes {
		if _, err := p.GetService(n); err == nil {
			t.Errorf("%s runs without the cluster profile", n)
		}
	}
	if r := service(t, p, "bridge").Environment["JETSYNC_STREAM_REPLICAS"]; r == nil || *r != "1" {
		t.Errorf("bridge: JETSYNC_STREAM_REPLICAS = %v, want 1 on the single server", deref(r))
	}
}
