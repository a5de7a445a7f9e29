// A Go program without crypto/tls: obs-ssl must name it as a Go binary it cannot read TLS
// from, once, rather than skip it silently. It sleeps for the seconds given.
package main

import (
	"os"
	"strconv"
	"time"
)

func main() {
	secs, _ := strconv.Atoi(os.Args[1])
	time.Sleep(time.Duration(secs) * time.Second)
}
