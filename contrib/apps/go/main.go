// A visit counter for Shadow: Go's standard library only.
//
//	GET /         counts the visit and answers "visits: N"
//	GET /healthz  answers "ok" without counting (use it as the task's health.path)
//
// The count lives in $DATA_DIR/visits (default /data, where Shadow mounts the task's volume), so
// it survives the container being stopped when idle and started again, on this node or another.
// Listens on $PORT (default 8000, the port Shadow expects).
package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type counter struct {
	mu   sync.Mutex
	path string
}

func (c *counter) read() (int, error) {
	b, err := os.ReadFile(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", c.path, err)
	}
	return n, nil
}

// write puts a new file in place with a rename: a stop at any moment leaves either the old count
// or the new one, never a torn file.
func (c *counter) write(n int) error {
	f, err := os.CreateTemp(filepath.Dir(c.path), ".visits.")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if _, err := fmt.Fprintf(f, "%d\n", n); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, c.path)
}

func (c *counter) visit() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.read()
	if err != nil {
		return 0, err
	}
	n++
	return n, c.write(n)
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func main() {
	dataDir := env("DATA_DIR", "/data")
	port := env("PORT", "8000")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		log.Fatalf("cannot create %s: %v", dataDir, err)
	}
	c := &counter{path: filepath.Join(dataDir, "visits")}

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		n, err := c.visit()
		if err != nil {
			log.Printf("cannot count the visit: %v", err)
			http.Error(w, "cannot store the count", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "visits: %d\n", n)
	})

	srv := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// As PID 1 in a container, SIGTERM has no default action: without a handler, `docker stop`
	// would wait for the grace period and then SIGKILL.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Printf("listening on :%s, data in %s", port, dataDir)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
