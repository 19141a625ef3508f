// The HTTP/1.1 front end of `origami serve`: Boost.Beast over one Asio io_context run by a few
// threads. It parses requests, checks the API key, routes by method and path, and writes the
// answers handlers give it, complete or streamed (server-sent events over chunked transfer
// encoding). It knows nothing of models or of the engine.
//
// Rules:
//   - Binds `host` (127.0.0.1 by default); port 0 picks a free port, reported by port().
//   - Keep-alive; a request (headers and body) must arrive within `read_timeout`, an idle
//     keep-alive connection is closed after it too; bodies over `body_limit` get 413, headers
//     over `header_limit` 431, malformed HTTP 400 (then the connection is closed); an unknown
//     path 404, a known path with another method 405 (with Allow). Every error body is the
//     OpenAI error JSON.
//   - With an API key set, every route not added with Auth::open needs
//     "Authorization: Bearer KEY" (compared in constant time), else 401 invalid_api_key.
//   - Handlers run on the server's threads and must not block: they answer through the
//     ResponseStream they are given, at once or later from any thread. A ProtocolError thrown by
//     a handler before it answers becomes its 4xx; any other exception a 500.
//   - Streamed answers use chunked transfer encoding; to an HTTP/1.0 client the stream is sent
//     raw and ended by closing the connection. Bytes queued while a write is in flight are sent
//     as one chunk.
//   - stop(drain): stops accepting, closes idle connections, lets responses in flight finish
//     for up to `drain` (their connections close after them), then closes the rest (their
//     streams report closed()) and joins the threads. Not from a handler or an on_close
//     callback. A ResponseStream may outlive stop() (its calls then do nothing) but not the
//     HttpServer.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace origami::serve {

class ProtocolError;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;  // 0: any free port (see HttpServer::port())
  int threads = 1;       // threads running the io_context
  std::string api_key;   // empty: no key needed
  size_t body_limit = size_t(4) << 20;
  size_t header_limit = size_t(16) << 10;
  std::chrono::milliseconds read_timeout{30000};   // one request's arrival; keep-alive idleness
  std::chrono::milliseconds write_timeout{60000};  // one write to a client that stopped reading
  size_t stream_backlog_limit = size_t(16) << 20;  // bytes queued for a slow client before we
                                                   // give up on it and close its connection
};

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // the target without its query
  std::string query;   // after '?', or empty
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // names as sent
  // The value of the first header named `name` (any case), or "".
  std::string header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra, e.g. {"Retry-After", "1"}
};

// An HttpResponse carrying the error JSON of `e` with its status.
HttpResponse error_response(const ProtocolError& e);
// An HttpResponse carrying {"error": {...}} with any status (5xx included).
HttpResponse error_response(int status, std::string_view message, std::string_view type,
                            std::string_view param = {}, std::string_view code = {});

class HttpConnection;

// Where a handler sends its answer: either one complete response (respond), or a streamed one
// (begin_stream, write..., finish). Every method is thread-safe and returns at once; the bytes
// are written on the server's threads in call order. Once the client has gone (or the server
// closed the connection) nothing more is sent: closed() turns true and the on_close callback
// runs, so the engine can abort the request and free its KV blocks. A stream dropped without an
// answer gets a 500; one dropped in the middle of its body has its connection closed.
class ResponseStream : public std::enable_shared_from_this<ResponseStream> {
 public:
  // A complete response; anything after the first answer is ignored.
  void respond(HttpResponse response);
  // Starts a streamed response with chunked transfer encoding. write() and finish() start one
  // with the defaults (200, text/event-stream) when it was not called.
  void begin_stream(int status = 200, std::string content_type = "text/event-stream",
                    std::vector<std::pair<std::string, std::string>> headers = {});
  // Queues bytes of the stream (an SSE event: sse_event(json)); false once closed() or finished.
  bool write(std::string bytes);
  // Ends the stream; the connection may then serve its next request.
  void finish();

  // True once the response can no longer reach the client: it went away, was too slow, or the
  // server closed the connection while stopping. Stays false after a normal end.
  bool closed() const { return closed_.load(); }
  // Runs `callback` once when the stream becomes closed() before its response ended (on a server
  // thread: keep it short), or at once on this thread when it already is.
  void on_close(std::function<void()> callback);

  ResponseStream(std::weak_ptr<HttpConnection> connection, uint64_t exchange);
  ~ResponseStream();
  ResponseStream(const ResponseStream&) = delete;
  ResponseStream& operator=(const ResponseStream&) = delete;

 private:
  friend class HttpConnection;
  void post(std::function<void(HttpConnection&)> action);
  void mark_closed();  // the connection closed before the response ended
  void mark_ended();   // the response went out whole

  std::weak_ptr<HttpConnection> connection_;
  uint64_t exchange_;  // which request of the connection this answers
  std::atomic<bool> closed_{false};
  std::atomic<bool> answered_{false};  // respond() or begin_stream() called
  std::atomic<bool> finished_{false};  // respond() or finish() called
  std::mutex mutex_;                   // guards on_close_ and ended_
  std::function<void()> on_close_;
  bool ended_ = false;
};

enum class Auth { required, open };

class HttpServer {
 public:
  struct State;

  using Handler = std::function<void(const HttpRequest&, std::shared_ptr<ResponseStream>)>;

  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();  // stop(0) when still running
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Adds a route (before start()). Auth::open: no API key needed (GET /health).
  void route(const std::string& method, const std::string& path, Handler handler,
             Auth auth = Auth::required);
  // Binds and listens, then serves on the option's threads. Throws origami::Error when the
  // address cannot be bound.
  void start();
  // The bound port (after start()).
  uint16_t port() const;
  // Graceful stop (see the rules above); returns when every thread has ended. Idempotent.
  void stop(std::chrono::milliseconds drain = std::chrono::milliseconds(0));
  // Open connections now (for tests and metrics).
  size_t connections() const;

 private:
  std::unique_ptr<State> state_;
};

}  // namespace origami::serve
