// weft-libcni-driver: drives CNI plugins through libcni, the library container
// runtimes (containerd, CRI-O, podman's CNI backend) are built on, so that the tests
// exercise weft-cni the way a runtime does: a conflist file, plugins found on a
// search path, results cached by libcni and handed back as prevResult on CHECK and
// DEL. Built offline by the tests from Debian's golang-github-appc-cni-dev (GOPATH
// mode); it holds no logic of its own beyond parsing its flags.
//
//	weft-libcni-driver -cmd add|check|del -conflist FILE -path DIR[:DIR] -cache DIR \
//	    -id CONTAINER_ID -netns PATH [-ifname eth0] [-args K=V;K=V] [-ports 8080:80/tcp,...]
//	weft-libcni-driver -cmd version -path DIR -type PLUGIN
//
// add prints the result as JSON on stdout. A failure prints the error on stderr (and,
// for an error the plugin reported, its JSON on stdout) and exits with status 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

func fail(err error) {
	// libcni wraps a plugin's error ("plugin type=... failed (add): %w").
	var e *types.Error
	if errors.As(err, &e) {
		if b, jerr := json.Marshal(e); jerr == nil {
			fmt.Println(string(b))
		}
	}
	fmt.Fprintf(os.Stderr, "weft-libcni-driver: %v\n", err)
	os.Exit(1)
}

// parsePorts reads "8080:80/tcp,53:53/udp".
func parsePorts(s string) ([]portMapping, error) {
	var out []portMapping
	for _, item := range strings.Split(s, ",") {
		if item == "" {
			continue
		}
		proto := "tcp"
		if i := strings.Index(item, "/"); i >= 0 {
			proto = item[i+1:]
			item = item[:i]
		}
		parts := strings.Split(item, ":")
		if len(parts) != 2 {
			return nil, fmt.Errorf("port %q: want HOST:CONTAINER[/PROTO]", item)
		}
		h, err := strconv.Atoi(parts[0])
		if err != nil {
			return nil, err
		}
		c, err := strconv.Atoi(parts[1])
		if err != nil {
			return nil, err
		}
		out = append(out, portMapping{HostPort: h, ContainerPort: c, Protocol: proto})
	}
	return out, nil
}

func main() {
	cmd := flag.String("cmd", "", "add, check, del or version")
	conflist := flag.String("conflist", "", "the network's .conflist file")
	path := flag.String("path", "/opt/cni/bin", "plugin directories, colon-separated")
	cache := flag.String("cache", "", "libcni's cache directory")
	id := flag.String("id", "", "CNI_CONTAINERID")
	netns := flag.String("netns", "", "CNI_NETNS")
	ifname := flag.String("ifname", "eth0", "CNI_IFNAME")
	args := flag.String("args", "", "CNI_ARGS pairs, K=V;K=V")
	ports := flag.String("ports", "", "portMappings, HOST:CONTAINER/PROTO,...")
	pluginType := flag.String("type", "", "the plugin VERSION asks")
	flag.Parse()

	cninet := libcni.NewCNIConfigWithCacheDir(strings.Split(*path, ":"), *cache, nil)
	ctx := context.Background()
	if *cmd == "version" {
		info, err := cninet.GetVersionInfo(ctx, *pluginType)
		if err != nil {
			fail(err)
		}
		b, _ := json.Marshal(map[string]interface{}{"supportedVersions": info.SupportedVersions()})
		fmt.Println(string(b))
		return
	}

	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		fail(err)
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    *id,
		NetNS:          *netns,
		IfName:         *ifname,
		CapabilityArgs: map[string]interface{}{},
	}
	for _, kv := range strings.Split(*args, ";") {
		if i := strings.Index(kv, "="); i > 0 {
			rt.Args = append(rt.Args, [2]string{kv[:i], kv[i+1:]})
		}
	}
	pm, err := parsePorts(*ports)
	if err != nil {
		fail(err)
	}
	if len(pm) > 0 {
		rt.CapabilityArgs["portMappings"] = pm
	}

	switch *cmd {
	case "add":
		result, err := cninet.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		b, err := json.Marshal(result)
		if err != nil {
			fail(err)
		}
		fmt.Println(string(b))
	case "check":
		if err := cninet.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cninet.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		fail(fmt.Errorf("unknown -cmd %q", *cmd))
	}
}
