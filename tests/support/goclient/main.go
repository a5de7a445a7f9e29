// A Go HTTPS client for obs-ssl's tests: Go's own crypto/tls, no libssl.
//
// Usage: goclient CA_PEM URL HEADERS_JSON BODY [REPEAT]
// POSTs BODY to URL REPEAT times (default 1) on one keep-alive connection, over HTTP/1.1
// (obs-ssl decodes HTTP/1.1 here; Go would negotiate h2 by ALPN otherwise). Exits 0 when
// every response is 200 and fully read. With GOCLIENT_STEP=1 in the environment it reads a
// line from stdin before each request and prints "done" after it (a test can attach first).
// With GOCLIENT_TIME=1 it prints the seconds requests 2..REPEAT took (the first one connects).
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) < 5 {
		fmt.Fprintln(os.Stderr, "usage: goclient CA_PEM URL HEADERS_JSON BODY [REPEAT]")
		os.Exit(2)
	}
	pem, err := os.ReadFile(os.Args[1])
	check(err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	var headers map[string]string
	check(json.Unmarshal([]byte(os.Args[3]), &headers))
	repeat := 1
	if len(os.Args) > 5 {
		repeat, err = strconv.Atoi(os.Args[5])
		check(err)
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		// a non-nil empty map turns HTTP/2 off
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	step := os.Getenv("GOCLIENT_STEP") == "1"
	var start time.Time
	stdin := bufio.NewReader(os.Stdin)
	for i := 0; i < repeat; i++ {
		if i == 1 {
			start = time.Now()
		}
		if step {
			stdin.ReadString('\n')
		}
		req, err := http.NewRequest("POST", os.Args[2], bytes.NewBufferString(os.Args[4]))
		check(err)
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		check(err)
		_, err = io.Copy(io.Discard, resp.Body)
		check(err)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			fmt.Fprintln(os.Stderr, "status", resp.StatusCode)
			os.Exit(3)
		}
		if step {
			fmt.Println("done")
		}
	}
	if os.Getenv("GOCLIENT_TIME") == "1" {
		fmt.Println(time.Since(start).Seconds())
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
