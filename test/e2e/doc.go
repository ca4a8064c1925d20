// Package e2e holds weft's end-to-end tests: hosts made of network
// namespaces (bench/lab), the weft binary built once from this tree, a
// real etcd, real traffic. They need root; under CI=true they never skip.
package e2e
