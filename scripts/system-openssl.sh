# Sourced by the build scripts. librdkafka's TLS comes from OpenSSL: the
# crate vendors a copy (so static builds work anywhere), and compiling it
# costs minutes on a small machine. Where the system has OpenSSL's
# development files, openssl-sys uses those instead when OPENSSL_NO_VENDOR
# is set; set it to 0 to build the vendored copy anyway.
if [ -z "${OPENSSL_NO_VENDOR+x}" ] && command -v pkg-config >/dev/null 2>&1 &&
  pkg-config --exists 'openssl >= 1.1.1' 2>/dev/null; then
  export OPENSSL_NO_VENDOR=1
fi
